//! Questions answered in batches: upgrades ask the database about their connection (its slot,
//! whether its address is blocked) through one task per kind of question, which answers every
//! question waiting at that moment with one statement. A connect storm then costs the database
//! one round trip per batch rather than one per upgrade, and the batches grow with the storm.
//!
//! Every question of an answered batch gets exactly one answer, drawn from what the statement
//! returned. An answer whose upgrade left before reading it is dropped: an answer that holds
//! something (a slot) gives it back in its `Drop`.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Error;
use crate::shutdown::Shutdown;

/// Most questions answered by one statement.
const MAX_BATCH: usize = 512;

/// How one kind of question is answered, a batch at a time.
pub(super) trait Statement: Send + 'static {
    /// What an upgrade asks.
    type Question: std::fmt::Debug + Send + Sync + 'static;
    /// What it is told.
    type Answer: std::fmt::Debug + Send + 'static;
    /// What the statement returned for a whole batch.
    type Answers: Send;
    /// The histogram of batch sizes (in the metrics catalog).
    const BATCH_SIZE: &'static str;
    /// What a failed batch was, in its warning.
    const WHAT: &'static str;

    /// Asks the database about `batch`, in one statement.
    fn ask(
        &mut self,
        batch: &[Self::Question],
    ) -> impl Future<Output = Result<Self::Answers, crate::pg::Error>> + Send;

    /// The answer to `question`, one of the batch `answers` came for.
    fn answer(&mut self, answers: &mut Self::Answers, question: &Self::Question) -> Self::Answer;

    /// The error each question of a failed batch gets.
    fn failed(error: Arc<crate::pg::Error>) -> Error;
}

/// A question waiting for its batch, and where its answer goes.
#[derive(Debug)]
struct Waiting<Q, A> {
    question: Q,
    reply: oneshot::Sender<Result<A, Error>>,
}

/// Where upgrades put their questions of one kind.
#[derive(Debug)]
pub(super) struct Batcher<Q, A> {
    queue: mpsc::UnboundedSender<Waiting<Q, A>>,
}

impl<Q, A> Clone for Batcher<Q, A> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// Starts the task answering with `statement`, named `name`, on the shutdown tracker; it
    /// ends at shutdown or when the last handle is dropped.
    pub(super) fn spawn<S>(name: &'static str, statement: S, shutdown: &Shutdown) -> Self
    where
        S: Statement<Question = Q, Answer = A>,
    {
        let (queue, waiting) = mpsc::unbounded_channel();
        let stop = shutdown.clone();
        shutdown.spawn(name, async move {
            tokio::select! {
                () = serve(statement, waiting) => {}
                () = stop.cancelled() => {}
            }
        });
        Batcher { queue }
    }

    /// Asks `question` with the other upgrades waiting, and waits for its answer.
    ///
    /// # Errors
    /// The statement's error when its batch failed (shared by the whole batch), or
    /// [`Error::Stopped`] when the task no longer answers (the node is stopping).
    pub(super) async fn ask(&self, question: Q) -> Result<A, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Waiting { question, reply })
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }
}

/// Answers the questions of `waiting`: every question waiting when a batch starts goes into it
/// (up to [`MAX_BATCH`]); questions arriving meanwhile wait for the next one. Questions whose
/// upgrade already left are dropped unasked. A failed statement fails its whole batch, with one
/// warning.
async fn serve<S: Statement>(
    mut statement: S,
    mut waiting: mpsc::UnboundedReceiver<Waiting<S::Question, S::Answer>>,
) {
    let mut batch = Vec::new();
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (questions, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .filter(|w| !w.reply.is_closed())
            .map(|w| (w.question, w.reply))
            .unzip();
        if questions.is_empty() {
            continue;
        }
        metrics::histogram!(S::BATCH_SIZE).record(questions.len() as f64);
        match statement.ask(&questions).await {
            Ok(mut answers) => {
                for (question, reply) in questions.iter().zip(replies) {
                    let answer = statement.answer(&mut answers, question);
                    // An upgrade gone meanwhile drops its answer here.
                    let _gone = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                tracing::warn!(
                    "{} for {} upgrades failed: {}",
                    S::WHAT,
                    questions.len(),
                    crate::error::chain(&e)
                );
                let error = S::failed(Arc::new(e));
                for reply in replies {
                    let _gone = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
    use tokio::task::JoinHandle;

    use super::*;

    /// A doubled number that reports itself when it is dropped unclaimed.
    #[derive(Debug)]
    struct Doubled {
        n: u32,
        dropped: Option<UnboundedSender<u32>>,
    }

    impl Doubled {
        fn claim(mut self) -> u32 {
            self.dropped = None;
            self.n
        }
    }

    impl Drop for Doubled {
        fn drop(&mut self) {
            if let Some(dropped) = self.dropped.take() {
                let _closed = dropped.send(self.n);
            }
        }
    }

    /// Doubles each number; fails a batch holding 0. Each batch reports its questions, then
    /// waits for a go from the test, so the test decides what queues up meanwhile.
    struct Double {
        started: UnboundedSender<Vec<u32>>,
        go: UnboundedReceiver<()>,
        dropped: UnboundedSender<u32>,
    }

    impl Statement for Double {
        type Question = u32;
        type Answer = Doubled;
        type Answers = HashMap<u32, u32>;
        const BATCH_SIZE: &'static str = "test_batch_size";
        const WHAT: &'static str = "doubling";

        async fn ask(&mut self, batch: &[u32]) -> Result<HashMap<u32, u32>, crate::pg::Error> {
            self.started.send(batch.to_vec()).unwrap();
            self.go.recv().await.unwrap();
            if batch.contains(&0) {
                return Err(crate::pg::Error::Timeout(Duration::from_secs(1)));
            }
            Ok(batch.iter().map(|n| (*n, n * 2)).collect())
        }

        fn answer(&mut self, answers: &mut HashMap<u32, u32>, question: &u32) -> Doubled {
            Doubled {
                n: answers[question],
                dropped: Some(self.dropped.clone()),
            }
        }

        fn failed(error: Arc<crate::pg::Error>) -> Error {
            // Not the slots' error: a batcher that gave every failure that one would be seen.
            Error::AuthFailures(error)
        }
    }

    /// `future`'s output, or a failed test after 30 s.
    async fn within<F: Future>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(30), future)
            .await
            .expect("no answer within 30 s")
    }

    struct Harness {
        batcher: Batcher<u32, Doubled>,
        started: UnboundedReceiver<Vec<u32>>,
        go: UnboundedSender<()>,
        dropped: UnboundedReceiver<u32>,
        shutdown: Shutdown,
    }

    impl Harness {
        fn new() -> Harness {
            let (started, started_rx) = mpsc::unbounded_channel();
            let (go, go_rx) = mpsc::unbounded_channel();
            let (dropped, dropped_rx) = mpsc::unbounded_channel();
            let shutdown = Shutdown::new();
            let statement = Double {
                started,
                go: go_rx,
                dropped,
            };
            Harness {
                batcher: Batcher::spawn("test_batcher", statement, &shutdown),
                started: started_rx,
                go,
                dropped: dropped_rx,
                shutdown,
            }
        }

        /// Asks `n` from a task of its own; returns once the question is in the queue.
        async fn ask(&self, n: u32) -> JoinHandle<Result<u32, Error>> {
            let (queued, is_queued) = oneshot::channel();
            let batcher = self.batcher.clone();
            let task = tokio::spawn(async move {
                let answer = batcher.ask(n);
                tokio::pin!(answer);
                // The first poll puts the question in the queue.
                assert!(futures_util::poll!(&mut answer).is_pending());
                queued.send(()).unwrap();
                answer.await.map(Doubled::claim)
            });
            within(is_queued).await.unwrap();
            task
        }

        /// Waits for the batch now asked, which must be `questions`.
        async fn started(&mut self, questions: &[u32]) {
            assert_eq!(within(self.started.recv()).await.unwrap(), questions);
        }

        /// Lets the batch out go on.
        fn go(&self) {
            self.go.send(()).unwrap();
        }

        /// Nothing was dropped unclaimed but what the test expected.
        fn nothing_else_dropped(&mut self) {
            assert!(self.dropped.try_recv().is_err(), "an answer was dropped");
        }
    }

    /// The answer of a question's task.
    async fn answer_of(task: JoinHandle<Result<u32, Error>>) -> Result<u32, Error> {
        within(task).await.unwrap()
    }

    #[tokio::test]
    async fn questions_waiting_together_are_answered_in_batches_each_with_its_own_answer() {
        let mut h = Harness::new();
        let first = h.ask(1).await;
        h.started(&[1]).await;
        // While the first batch is out, 513 more questions queue up: the next batch takes the
        // most one statement may answer, and the last waits for the batch after.
        let mut waiting = Vec::new();
        for n in 2..=514 {
            waiting.push((n, h.ask(n).await));
        }
        h.go();
        assert_eq!(answer_of(first).await.unwrap(), 2);
        h.started(&(2..=513).collect::<Vec<_>>()).await;
        h.go();
        h.started(&[514]).await;
        h.go();
        for (n, task) in waiting {
            assert_eq!(answer_of(task).await.unwrap(), n * 2);
        }
        h.nothing_else_dropped();
        h.shutdown.trigger();
    }

    #[tokio::test]
    async fn an_answer_whose_asker_left_is_dropped_and_a_question_whose_asker_left_is_not_asked() {
        let mut h = Harness::new();
        let left_late = h.ask(7).await;
        h.started(&[7]).await;
        // Left while its batch was out: its answer is dropped.
        left_late.abort();
        assert!(within(left_late).await.unwrap_err().is_cancelled());
        // Left while its question waited: it is not asked, and a batch of none is not asked.
        let left_early = h.ask(9).await;
        left_early.abort();
        assert!(within(left_early).await.unwrap_err().is_cancelled());
        h.go();
        assert_eq!(within(h.dropped.recv()).await.unwrap(), 14);
        let next = h.ask(8).await;
        h.started(&[8]).await;
        h.go();
        assert_eq!(answer_of(next).await.unwrap(), 16);
        h.nothing_else_dropped();
        h.shutdown.trigger();
    }

    #[tokio::test]
    async fn a_failed_batch_fails_its_own_questions_only_and_a_stopped_node_answers_none() {
        let mut h = Harness::new();
        let first = h.ask(5).await;
        h.started(&[5]).await;
        let failing = [h.ask(0).await, h.ask(3).await];
        h.go();
        assert_eq!(answer_of(first).await.unwrap(), 10);
        h.started(&[0, 3]).await;
        h.go();
        for task in failing {
            let e = answer_of(task).await.unwrap_err();
            assert!(matches!(e, Error::AuthFailures(_)), "{e}");
        }
        let after = h.ask(4).await;
        h.started(&[4]).await;
        h.go();
        assert_eq!(answer_of(after).await.unwrap(), 8);
        // Stopping while a batch is out: its question is told so, and so is any after it.
        let cut = h.ask(6).await;
        h.started(&[6]).await;
        h.shutdown.trigger();
        let e = answer_of(cut).await.unwrap_err();
        assert!(matches!(e, Error::Stopped), "{e}");
        assert!(h.shutdown.wait(Duration::from_secs(30)).await);
        let e = h.batcher.ask(11).await.unwrap_err();
        assert!(matches!(e, Error::Stopped), "{e}");
        h.nothing_else_dropped();
    }
}
