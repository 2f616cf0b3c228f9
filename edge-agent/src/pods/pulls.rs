//! Image pulls in flight: a container start asks for its image and gets it at once when the
//! node has it; a pull still running after a moment is kept here while the round moves on,
//! so a slow pull does not hold back other pods, and a later round picks up its result.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::images::{ImageError, ImageStore, PreparedImage, PullPolicy};

use super::plan::Waiting;

/// How long a start waits for a new pull before the round moves on.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// A pull running on a blocking thread.
type Pull = tokio::task::JoinHandle<Result<PreparedImage, ImageError>>;

/// Where an image is.
#[derive(Debug)]
pub enum PullState {
    /// Still being pulled.
    Pending,
    Ready(PreparedImage),
    /// Not usable: the waiting reason and its message.
    Failed {
        reason: Waiting,
        message: String,
    },
}

/// The pulls still running, by image.
#[derive(Default)]
pub struct Pulls {
    running: HashMap<String, Pull>,
}

impl Pulls {
    /// The image's state: a pull under way is only checked; a new one gets [`PULL_WAIT`],
    /// which is all an image the node has needs.
    pub async fn poll(
        &mut self,
        images: &Arc<dyn ImageStore>,
        image: &str,
        policy: PullPolicy,
    ) -> PullState {
        let (mut pull, wait) = match self.running.remove(image) {
            Some(p) => (p, Duration::ZERO),
            None => {
                let images = images.clone();
                let i = image.to_string();
                (
                    tokio::task::spawn_blocking(move || images.prepare(&i, policy)),
                    PULL_WAIT,
                )
            }
        };
        match tokio::time::timeout(wait, &mut pull).await {
            Err(_) => {
                self.running.insert(image.to_string(), pull);
                PullState::Pending
            }
            Ok(Ok(Ok(prepared))) => PullState::Ready(prepared),
            Ok(Ok(Err(e))) => PullState::Failed {
                reason: waiting_reason(&e),
                message: e.to_string(),
            },
            Ok(Err(e)) => PullState::Failed {
                reason: Waiting::ErrImagePull,
                message: e.to_string(),
            },
        }
    }
}

/// The container's waiting reason for an image error, as the kubelet names it.
fn waiting_reason(e: &ImageError) -> Waiting {
    match e {
        ImageError::NotPresent { .. } => Waiting::ErrImageNeverPull,
        ImageError::Invalid(_) => Waiting::InvalidImageName,
        ImageError::Pull { .. } | ImageError::NoPlatform(_) => Waiting::ErrImagePull,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;

    /// `gate...` images wait for the test to open the gate; `missing...` are not there.
    struct Gated(Mutex<mpsc::Receiver<()>>);
    impl ImageStore for Gated {
        fn prepare(&self, image: &str, _p: PullPolicy) -> Result<PreparedImage, ImageError> {
            if image.starts_with("missing") {
                return Err(ImageError::NotPresent {
                    image: image.into(),
                    looked: "nowhere".into(),
                });
            }
            if image.starts_with("gate") {
                let _ = self.0.lock().unwrap().recv();
            }
            Ok(PreparedImage {
                layers: vec![],
                config: Default::default(),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_pull_is_kept_and_its_result_taken_later() {
        let (open, gate) = mpsc::channel();
        let images: Arc<dyn ImageStore> = Arc::new(Gated(Mutex::new(gate)));
        let mut pulls = Pulls::default();
        let p = PullPolicy::IfNotPresent;
        assert!(matches!(
            pulls.poll(&images, "here:1", p).await,
            PullState::Ready(_)
        ));
        assert!(matches!(
            pulls.poll(&images, "gate:1", p).await,
            PullState::Pending
        ));
        assert_eq!(pulls.running.len(), 1, "the pull is kept");
        open.send(()).unwrap();
        let t = std::time::Instant::now();
        loop {
            match pulls.poll(&images, "gate:1", p).await {
                PullState::Ready(_) => break,
                PullState::Pending => assert!(t.elapsed() < Duration::from_secs(10)),
                other => panic!("{other:?}"),
            }
            tokio::task::yield_now().await;
        }
        assert!(pulls.running.is_empty(), "a taken result is forgotten");
        match pulls.poll(&images, "missing:1", PullPolicy::Never).await {
            PullState::Failed { reason, message } => {
                assert_eq!(reason, Waiting::ErrImageNeverPull);
                assert!(message.contains("not present"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn image_errors_map_to_the_kubelets_reasons() {
        let pull = ImageError::Pull {
            image: "i".into(),
            message: "m".into(),
        };
        assert_eq!(waiting_reason(&pull), Waiting::ErrImagePull);
        assert_eq!(
            waiting_reason(&ImageError::Invalid("x".into())),
            Waiting::InvalidImageName
        );
        assert_eq!(
            waiting_reason(&ImageError::NoPlatform("x".into())),
            Waiting::ErrImagePull
        );
    }
}
