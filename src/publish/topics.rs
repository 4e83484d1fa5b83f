//! The MQTT topic layout, in one place: `<prefix>/<device>/...` (see the README's MQTT contract).

use crate::message::ASK_TASK;

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

    /// Retained: a task's latest answer, for whoever subscribes later (Home Assistant's entities).
    pub fn state(&self, camera: &str, task: &str) -> String {
        format!("{}/{camera}/{task}/state", self.base)
    }

    /// The state topic of a configured task's answer topic; `None` for any other topic (asks' own
    /// answers included: they describe no entity).
    pub(crate) fn state_of_answer(&self, topic: &str) -> Option<String> {
        let rest = topic.strip_prefix(self.base.as_str())?.strip_prefix('/')?;
        let (camera, task) = rest.strip_suffix("/answer")?.split_once('/')?;
        let valid = |part: &str| !part.is_empty() && !part.contains('/');
        (valid(camera) && valid(task) && task != ASK_TASK).then(|| self.state(camera, task))
    }

    /// Where asks to `camera` arrive.
    pub fn ask(&self, camera: &str) -> String {
        format!("{}/{camera}/ask", self.base)
    }

    /// The subscription for on-demand asks to any camera.
    pub fn asks(&self) -> String {
        format!("{}/+/ask", self.base)
    }

    /// Config pushes from the fleet's operator.
    pub(crate) fn config_desired(&self) -> String {
        format!("{}/config/desired", self.base)
    }

    /// The answer to each push: applied, or why not.
    pub(crate) fn config_ack(&self) -> String {
        format!("{}/config/ack", self.base)
    }

    /// Retained: the config this box runs, its version and status.
    pub(crate) fn config_reported(&self) -> String {
        format!("{}/config/reported", self.base)
    }

    /// The camera an ask topic names, if `topic` is one.
    pub(crate) fn ask_camera<'a>(&self, topic: &'a str) -> Option<&'a str> {
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
        assert_eq!(
            topics.state_of_answer("lookout/box1/porch/person/answer"),
            Some("lookout/box1/porch/person/state".to_owned())
        );
        for other in [
            "lookout/box1/porch/ask/answer",
            "lookout/box1/config/ack",
            "lookout/box2/porch/person/answer",
            "lookout/box1/a/b/c/answer",
        ] {
            assert_eq!(topics.state_of_answer(other), None, "{other}");
        }
    }
}
