//! Following a stream from every agent at once (`weir events`, `weir
//! observe`): items are printed as they come, from whichever node; a node
//! that refuses is reported by name.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use super::client::{self, ServiceClient};

/// When to stop following; both None: until interrupted.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub count: Option<usize>,
    pub timeout: Option<Duration>,
}

pub async fn follow<C, T, F, Fut>(
    agents: Vec<(String, PathBuf)>,
    open: F,
    limits: Limits,
    mut print: impl FnMut(T),
) -> anyhow::Result<()>
where
    C: ServiceClient + Send + 'static,
    T: Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>> + Send,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<T>>(1024);
    for (node, socket) in agents {
        let (tx, open) = (tx.clone(), open.clone());
        tokio::spawn(async move {
            let stream = async { anyhow::Ok(open(client::connect(socket).await?).await?.into_inner()) }.await;
            match stream {
                Ok(mut stream) => loop {
                    let item = match stream.message().await {
                        Ok(Some(item)) => Ok(item),
                        Ok(None) => return,
                        Err(e) => Err(anyhow::anyhow!("{node}: {}", e.message())),
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                },
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("{node}: {}", client::status_message(&e)))).await;
                }
            }
        });
    }
    drop(tx);
    let deadline = limits.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0usize;
    loop {
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => tokio::select! {
                next = rx.recv() => next,
                _ = tokio::signal::ctrl_c() => break,
            },
        };
        let Some(item) = next else { break };
        print(item?);
        seen += 1;
        if limits.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}

/// Follows every agent of `agents` and prints each item as JSON or a line,
/// as `-o` asks (`weir events`, `weir observe`).
pub fn print_all<C, T, F, Fut>(
    agents: Vec<(String, PathBuf)>,
    open: F,
    limits: Limits,
    json: bool,
    to_json: fn(&T) -> serde_json::Value,
    to_line: fn(&T) -> String,
) -> anyhow::Result<std::process::ExitCode>
where
    C: ServiceClient + Send + 'static,
    T: Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>> + Send,
{
    let rt = client::runtime()?;
    rt.block_on(follow(agents, open, limits, |item| {
        if json {
            println!("{}", to_json(&item));
        } else {
            println!("{}", to_line(&item));
        }
    }))?;
    Ok(std::process::ExitCode::SUCCESS)
}
