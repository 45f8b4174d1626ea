//! Load-test harness for realtime-gateway. The scenarios arrive with the load-test issue.

fn main() {
    eprintln!("loadtest: no scenarios yet");
}
