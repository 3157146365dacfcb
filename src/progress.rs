//! Progress bars (indicatif) for long work: training, evaluation, many images.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar on stderr for `len` steps of `what`, with position, rate and ETA; the caller's
/// messages (losses, learning rate) go after it.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}] {{msg}}"
        ))
        .expect("valid progress template"),
    );
    bar
}
