//! Seeded mutation of valid inputs, shared by the fuzz tests.
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One random mutation of `seed`: one edit mostly, up to four.
pub fn mutate(seed: &[u8], tokens: &[&str], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    let edits = if rng.gen_bool(0.6) {
        1
    } else {
        rng.gen_range(2..=4)
    };
    for _ in 0..edits {
        let len = data.len();
        let at = rng.gen_range(0..=len);
        match rng.gen_range(0..8) {
            0 => data.truncate(at),
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] ^= 1 << rng.gen_range(0..8);
            }
            2 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] = rng.gen();
            }
            3 => {
                let n = rng.gen_range(1..8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                data.splice(at..at, bytes);
            }
            4 if at < len => {
                let end = rng.gen_range(at..=len.min(at + 32));
                data.drain(at..end);
            }
            5 if at < len => {
                let end = rng.gen_range(at..=len.min(at + 64));
                let span = data[at..end].to_vec();
                data.splice(at..at, span);
            }
            _ => {
                let token = tokens.choose(rng).unwrap().as_bytes().to_vec();
                if rng.gen_bool(0.5) && at < len {
                    let end = rng.gen_range(at..=len.min(at + 8));
                    data.splice(at..end, token);
                } else {
                    data.splice(at..at, token);
                }
            }
        }
    }
    data
}
