//! The MQTT topic layout, in one place: `<prefix>/<device>/...` (see the README's MQTT contract).

/// Topic names for one device.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Topics {
        Topics {
            base: format!("{prefix}/{device}"),
        }
    }

    /// Retained `online` / `offline`; `offline` is also the last will.
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// Retained counters, refreshed on an interval.
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }

    pub fn answer(&self, camera: &str, task: &str) -> String {
        format!("{}/{camera}/{task}/answer", self.base)
    }

    /// The subscription for on-demand asks to any camera.
    pub fn asks(&self) -> String {
        format!("{}/+/ask", self.base)
    }

    /// Config pushes from the fleet's operator.
    pub fn config_desired(&self) -> String {
        format!("{}/config/desired", self.base)
    }

    /// The answer to each push: applied, or why not.
    pub fn config_ack(&self) -> String {
        format!("{}/config/ack", self.base)
    }

    /// Retained: the config this box runs, its version and status.
    pub fn config_reported(&self) -> String {
        format!("{}/config/reported", self.base)
    }

    /// The camera an ask topic names, if `topic` is one.
    pub fn ask_camera<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(self.base.as_str())?.strip_prefix('/')?;
        let camera = rest.strip_suffix("/ask")?;
        (!camera.is_empty() && !camera.contains('/')).then_some(camera)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ask_topics_name_their_camera() {
        let topics = Topics::new("lookout", "box1");
        assert_eq!(topics.ask_camera("lookout/box1/porch/ask"), Some("porch"));
        assert_eq!(topics.ask_camera("lookout/box1/a/b/ask"), None);
        assert_eq!(topics.ask_camera("lookout/box2/porch/ask"), None);
        assert_eq!(
            topics.ask_camera("lookout/box1/porch/describe/answer"),
            None
        );
        assert_eq!(
            topics.answer("porch", "ask"),
            "lookout/box1/porch/ask/answer"
        );
    }
}
