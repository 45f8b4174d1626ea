//! Questions answered in batches: upgrades ask the database about their connection (its slot,
//! whether its address is blocked) through one task per kind of question, which answers every
//! question waiting at that moment with one statement. A connect storm then costs the database
//! one round trip per batch rather than one per upgrade, and the batches grow with the storm.

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
    /// The histogram of batch sizes (in the metrics catalog).
    const BATCH_SIZE: &'static str;
    /// What a failed batch was, in its warning.
    const WHAT: &'static str;

    /// The answers to `batch`, one per question, in its order.
    fn answer(
        &mut self,
        batch: &[Self::Question],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, crate::pg::Error>> + Send;

    /// The error each question of a failed batch gets.
    fn failed(error: Arc<crate::pg::Error>) -> Error;

    /// Takes back `answer`, whose upgrade left while it was being answered.
    fn unclaimed(&mut self, _question: &Self::Question, _answer: Self::Answer) {}
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
    /// [`Error::Stopped`] when the node is stopping.
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
        match statement.answer(&questions).await {
            Ok(answers) => {
                debug_assert_eq!(answers.len(), questions.len(), "one answer per question");
                for ((question, reply), answer) in questions.iter().zip(replies).zip(answers) {
                    if let Err(Ok(answer)) = reply.send(Ok(answer)) {
                        statement.unclaimed(question, answer);
                    }
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
    use std::time::Duration;

    use tokio::sync::mpsc::UnboundedSender;
    use tokio::task::JoinHandle;

    use super::*;

    /// Doubles each number; fails a batch holding 0. Each batch reports its questions, then
    /// waits for a go from the test, so the test decides what queues up meanwhile.
    struct Double {
        started: UnboundedSender<Vec<u32>>,
        go: mpsc::UnboundedReceiver<()>,
        unclaimed: UnboundedSender<(u32, u32)>,
    }

    impl Statement for Double {
        type Question = u32;
        type Answer = u32;
        const BATCH_SIZE: &'static str = "test_batch_size";
        const WHAT: &'static str = "doubling";

        async fn answer(&mut self, batch: &[u32]) -> Result<Vec<u32>, crate::pg::Error> {
            self.started.send(batch.to_vec()).unwrap();
            self.go.recv().await.unwrap();
            if batch.contains(&0) {
                return Err(crate::pg::Error::Timeout(Duration::from_secs(1)));
            }
            Ok(batch.iter().map(|n| n * 2).collect())
        }

        fn failed(error: Arc<crate::pg::Error>) -> Error {
            Error::AuthFailures(error)
        }

        fn unclaimed(&mut self, question: &u32, answer: u32) {
            self.unclaimed.send((*question, answer)).unwrap();
        }
    }

    struct Harness {
        batcher: Batcher<u32, u32>,
        started: mpsc::UnboundedReceiver<Vec<u32>>,
        go: UnboundedSender<()>,
        unclaimed: mpsc::UnboundedReceiver<(u32, u32)>,
        shutdown: Shutdown,
    }

    impl Harness {
        fn new() -> Harness {
            let (started, started_rx) = mpsc::unbounded_channel();
            let (go, go_rx) = mpsc::unbounded_channel();
            let (unclaimed, unclaimed_rx) = mpsc::unbounded_channel();
            let shutdown = Shutdown::new();
            let statement = Double {
                started,
                go: go_rx,
                unclaimed,
            };
            Harness {
                batcher: Batcher::spawn("test_batcher", statement, &shutdown),
                started: started_rx,
                go,
                unclaimed: unclaimed_rx,
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
                answer.await
            });
            is_queued.await.unwrap();
            task
        }

        /// Lets the batch out now go on, once it has reported `questions`.
        async fn answer(&mut self, questions: &[u32]) {
            assert_eq!(self.started.recv().await.unwrap(), questions);
            self.go.send(()).unwrap();
        }
    }

    #[tokio::test]
    async fn questions_waiting_together_are_answered_in_one_batch_each_with_its_own_answer() {
        let mut h = Harness::new();
        let first = h.ask(1).await;
        // While the first batch is out, 100 more questions queue up.
        let mut waiting = Vec::new();
        for n in 2..102 {
            waiting.push((n, h.ask(n).await));
        }
        h.answer(&[1]).await;
        assert_eq!(first.await.unwrap().unwrap(), 2);
        h.answer(&(2..102).collect::<Vec<_>>()).await;
        for (n, ask) in waiting {
            assert_eq!(ask.await.unwrap().unwrap(), n * 2);
        }
        h.shutdown.trigger();
    }

    #[tokio::test]
    async fn an_answer_whose_asker_left_is_taken_back_and_a_question_of_one_gone_is_not_asked() {
        let mut h = Harness::new();
        let gone = h.ask(7).await;
        assert_eq!(h.started.recv().await.unwrap(), vec![7]);
        // Left while its batch was out: its answer is taken back.
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        // Left while its question waited: it is not asked.
        let left_early = h.ask(9).await;
        left_early.abort();
        assert!(left_early.await.unwrap_err().is_cancelled());
        let next = h.ask(8).await;
        h.go.send(()).unwrap();
        assert_eq!(h.unclaimed.recv().await.unwrap(), (7, 14));
        h.answer(&[8]).await;
        assert_eq!(next.await.unwrap().unwrap(), 16);
        h.shutdown.trigger();
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_questions_and_not_the_next_batch() {
        let mut h = Harness::new();
        let first = h.ask(5).await;
        let failing = [h.ask(0).await, h.ask(3).await];
        h.answer(&[5]).await;
        assert_eq!(first.await.unwrap().unwrap(), 10);
        h.answer(&[0, 3]).await;
        for ask in failing {
            let e = ask.await.unwrap().unwrap_err();
            assert!(matches!(e, Error::AuthFailures(_)), "{e}");
        }
        let after = h.ask(4).await;
        h.answer(&[4]).await;
        assert_eq!(after.await.unwrap().unwrap(), 8);
        // Once the node has stopped, its batcher answers no more.
        h.shutdown.trigger();
        assert!(h.shutdown.wait(Duration::from_secs(30)).await);
        let stopped = h.batcher.ask(6).await.unwrap_err();
        assert!(matches!(stopped, Error::Stopped), "{stopped}");
    }
}
