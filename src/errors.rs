//! How an error reads in a log line or on stderr: its message followed by each cause, because the
//! libraries we use (reqwest, hyper, rustls) put the useful part in the causes ("error sending request"
//! alone says nothing; "... : connection refused" does).

/// `error` and its causes, joined by ": ".
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
