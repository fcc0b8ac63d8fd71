//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Inputs that feed several values (a Kafka record's key, value and headers; a REST request's
//! path, query, header and body) are split on the byte `0xFF`, which never occurs in UTF-8, so a
//! seed file is the real text of each part joined by that byte (see `fuzz/corpus/`).

use std::future::Future;

/// The byte between the parts of one input.
pub const SEPARATOR: u8 = 0xFF;

/// The first `N` parts of `data` split on [`SEPARATOR`]; missing parts are `None`, and the last
/// part keeps any further separators (so a body may hold one).
pub fn parts<const N: usize>(data: &[u8]) -> [Option<&[u8]>; N] {
    let mut pieces = data.splitn(N, |&byte| byte == SEPARATOR);
    std::array::from_fn(|_| pieces.next())
}

/// Runs a future that needs no reactor (poem's extractors over an in-memory request) to the end.
pub fn block_on<F: Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}
