//! REST history readers: they page through channels (backward from the newest page, or forward
//! from a random seq) on either ws-server while the faults run. Each page must be ascending and
//! contiguous, and consecutive pages must meet at their cursors; every message read is recorded
//! for the comparison with PostgreSQL at the end.

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::{messages_path, Delivered, Workload};
use crate::history::{bump, History};

#[derive(Debug, Deserialize)]
pub struct Page {
    pub messages: Vec<Delivered>,
    pub next_before: Option<i64>,
    pub next_after: Option<i64>,
}

/// Why a page could not be read.
#[derive(Debug)]
pub enum PageError {
    /// A refusal the protocol allows during faults (429, 503) or no answer at all.
    Unavailable(String),
    /// Anything else: a violation.
    Wrong(String),
}

/// One `GET` of a channel's history, with its page checked for order and contiguity.
pub async fn page(
    http: &reqwest::Client,
    server: SocketAddr,
    channel: &str,
    query: &str,
) -> Result<Page, PageError> {
    let url = format!("http://{server}{}?{query}", messages_path(channel));
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| PageError::Unavailable(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| PageError::Unavailable(e.to_string()))?;
    match status {
        200 => {}
        429 | 503 => return Err(PageError::Unavailable(format!("{status} {body}"))),
        _ => return Err(PageError::Wrong(format!("GET {url}: {status} {body}"))),
    }
    let page: Page =
        serde_json::from_str(&body).map_err(|e| PageError::Wrong(format!("GET {url}: {e}")))?;
    for pair in page.messages.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(PageError::Wrong(format!(
                "GET {url}: seq {} then {}",
                pair[0].seq, pair[1].seq
            )));
        }
    }
    Ok(page)
}

pub async fn run(workload: Workload, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let history = workload.history.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client");
    let mut newest: std::collections::HashMap<String, i64> = Default::default();
    while !workload.winding_down.is_cancelled() {
        let server = workload.random_server(&mut rng);
        let channel = workload
            .channels
            .choose(&mut rng)
            .expect("channels")
            .clone();
        let limit = rng.random_range(1..=100);
        let backward = rng.random_bool(0.5);
        let mut query = if backward {
            format!("limit={limit}")
        } else {
            let known = newest.get(&channel).copied().unwrap_or(0);
            format!("limit={limit}&after={}", rng.random_range(0..=known))
        };
        let mut previous: Option<(i64, i64)> = None;
        for _ in 0..rng.random_range(1..=5) {
            let result = page(&http, server, &channel, &query).await;
            bump(&history.counters.rest_pages);
            let page = match result {
                Ok(page) => page,
                Err(PageError::Unavailable(_)) => {
                    bump(&history.counters.rest_errors);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    break;
                }
                Err(PageError::Wrong(detail)) => {
                    history.violation("rest_page", detail);
                    break;
                }
            };
            record(&history, &channel, &page);
            if let (Some(first), Some(last)) = (page.messages.first(), page.messages.last()) {
                let top = newest.entry(channel.clone()).or_default();
                *top = (*top).max(last.seq);
                if let Some((prev_first, prev_last)) = previous {
                    let meets = if backward {
                        last.seq == prev_first - 1
                    } else {
                        first.seq == prev_last + 1
                    };
                    if !meets {
                        history.violation(
                            "rest_cursor",
                            format!(
                                "{channel}: page {}..{} after page {prev_first}..{prev_last} ({query})",
                                first.seq, last.seq
                            ),
                        );
                    }
                }
                previous = Some((first.seq, last.seq));
            }
            let cursor = if backward {
                page.next_before
                    .map(|b| format!("limit={limit}&before={b}"))
            } else {
                page.next_after
                    .filter(|_| !page.messages.is_empty())
                    .map(|a| format!("limit={limit}&after={a}"))
            };
            let Some(next) = cursor else { break };
            query = next;
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
    }
}

fn record(history: &History, channel: &str, page: &Page) {
    for message in &page.messages {
        history.saw(channel, message.seq, message.seen(), "rest");
    }
}
