//! The hand-off from the gates to the analyser: at most one pending job per camera.
//!
//! Policy when the analyser is slower than the cameras: a new job for a camera that already has one
//! waiting does not queue behind it; it takes its place with the newer frame, and the waiting job's
//! requests are folded in (a task asked twice is asked once; asks are all kept). So the queue never holds
//! more than one frame per camera, answers are about the freshest picture, and no ask is dropped. Cameras
//! are served in the order their jobs first arrived, so a busy camera cannot starve a quiet one.
//!
//! The analyser runs on a blocking thread, so waiting uses a `Condvar`; pushing never blocks.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::Job;
use crate::message::Origin;
use crate::stats::Stats;

#[derive(Clone)]
pub struct JobQueue {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Job>,
    closed: bool,
}

/// What `push` did with a job.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Folded into the camera's waiting job.
    Merged,
    /// The queue is closed (shutting down); the job was dropped.
    Closed,
}

impl JobQueue {
    pub fn new(stats: Arc<Stats>) -> JobQueue {
        JobQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                ready: Condvar::new(),
                stats,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent VecDeque; keep serving.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn push(&self, job: Job) -> Pushed {
        let mut state = self.lock();
        if state.closed {
            return Pushed::Closed;
        }
        let pushed = match state
            .pending
            .iter_mut()
            .find(|waiting| waiting.frame.camera == job.frame.camera)
        {
            Some(waiting) => {
                let mut requests = std::mem::take(&mut waiting.requests);
                for request in job.requests {
                    let repeated_task = matches!(&request.origin, Origin::Task(id)
                        if requests.iter().any(|r| matches!(&r.origin, Origin::Task(other) if other == id)));
                    if !repeated_task {
                        requests.push(request);
                    }
                }
                waiting.frame = job.frame;
                waiting.requests = requests;
                self.shared.stats.jobs_merged.inc();
                Pushed::Merged
            }
            None => {
                state.pending.push_back(job);
                self.shared.stats.jobs_queued.inc();
                Pushed::Queued
            }
        };
        self.shared
            .stats
            .pending_jobs
            .set(state.pending.len() as u64);
        drop(state);
        self.shared.ready.notify_one();
        pushed
    }

    /// Waits for the next job; `None` once the queue is closed and empty.
    pub(crate) fn pop_blocking(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.pending.pop_front() {
                self.shared
                    .stats
                    .pending_jobs
                    .set(state.pending.len() as u64);
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state = self
                .shared
                .ready
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// The next job if one waits, without waiting.
    pub(crate) fn try_pop(&self) -> Option<Job> {
        let mut state = self.lock();
        let job = state.pending.pop_front();
        self.shared
            .stats
            .pending_jobs
            .set(state.pending.len() as u64);
        job
    }

    /// Refuses new jobs; the waiting ones are still handed out, then `pop_blocking` returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::message::Frame;
    use crate::message::{AnswerKind, Request};

    fn frame(camera: &str, seq: u64) -> Arc<crate::message::Frame> {
        Arc::new(Frame {
            camera: Arc::from(camera),
            seq,
            captured_at: SystemTime::now(),
            capture_time: Duration::ZERO,
            image: image::RgbImage::new(2, 2),
        })
    }

    fn request(origin: Origin) -> Request {
        Request {
            origin,
            question: "Q?".into(),
            kind: AnswerKind::Text,
            split: false,
            max_new_tokens: 8,
            permit: None,
            clip: None,
        }
    }

    fn task(id: &str) -> Origin {
        Origin::Task(Arc::from(id))
    }

    #[test]
    fn a_newer_frame_replaces_the_waiting_one_and_keeps_every_request() {
        let queue = JobQueue::new(Arc::default());
        let ask = |id: &str| Origin::Ask {
            id: id.into(),
            task: None,
        };
        assert_eq!(
            queue.push(Job {
                frame: frame("a", 1),
                requests: vec![request(task("t1")), request(ask("q1"))]
            }),
            Pushed::Queued
        );
        assert_eq!(
            queue.push(Job {
                frame: frame("b", 1),
                requests: vec![request(task("t9"))]
            }),
            Pushed::Queued
        );
        assert_eq!(
            queue.push(Job {
                frame: frame("a", 2),
                requests: vec![request(task("t1")), request(task("t2")), request(ask("q2"))]
            }),
            Pushed::Merged
        );

        let first = queue.pop_blocking().unwrap();
        assert_eq!(
            (&*first.frame.camera, first.frame.seq),
            ("a", 2),
            "camera a keeps its place, with the newest frame"
        );
        let origins: Vec<String> = first
            .requests
            .iter()
            .map(|r| format!("{:?}", r.origin))
            .collect();
        assert_eq!(origins.len(), 4, "t1 once, q1, t2, q2: {origins:?}");
        let second = queue.pop_blocking().unwrap();
        assert_eq!(&*second.frame.camera, "b");
    }

    /// Issue 26: cameras are served in the order their jobs first arrived, so however often a busy
    /// camera pushes, a quiet camera's job is next after the busy one's waiting job.
    #[test]
    fn a_busy_camera_cannot_starve_a_quiet_one() {
        let queue = JobQueue::new(Arc::default());
        let push = |camera: &str, seq: u64| {
            queue.push(Job {
                frame: frame(camera, seq),
                requests: vec![request(task("t"))],
            })
        };
        assert_eq!(push("busy", 1), Pushed::Queued);
        assert_eq!(push("quiet", 1), Pushed::Queued);
        let mut served = Vec::new();
        for round in 0..3 {
            for seq in 2..20 {
                push("busy", round * 100 + seq);
            }
            let job = queue.try_pop().unwrap();
            served.push(job.frame.camera.to_string());
            // The busy camera's next job queues behind the quiet one's, wherever it stands.
            push("busy", round * 100 + 99);
            if round < 2 {
                let job = queue.try_pop().unwrap();
                served.push(job.frame.camera.to_string());
                push("quiet", round + 2);
            }
        }
        assert_eq!(served, ["busy", "quiet", "busy", "quiet", "busy"]);
    }

    #[test]
    fn close_hands_out_what_waits_then_ends() {
        let queue = JobQueue::new(Arc::default());
        queue.push(Job {
            frame: frame("a", 1),
            requests: vec![request(task("t"))],
        });
        queue.close();
        assert_eq!(
            queue.push(Job {
                frame: frame("b", 1),
                requests: vec![]
            }),
            Pushed::Closed
        );
        assert!(queue.pop_blocking().is_some());
        assert!(queue.pop_blocking().is_none());
    }

    #[test]
    fn a_waiting_consumer_wakes_on_push_and_on_close() {
        let queue = JobQueue::new(Arc::default());
        let consumer = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                (
                    queue.pop_blocking().is_some(),
                    queue.pop_blocking().is_none(),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        queue.push(Job {
            frame: frame("a", 1),
            requests: vec![],
        });
        queue.close();
        assert_eq!(consumer.join().unwrap(), (true, true));
    }
}
