//! The byte corpus: random training windows and the fixed validation sample.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::TrainError;
use crate::rng::SplitMix64;

/// File names inside the data directory (written by `train/fetch_data.sh`).
pub const TRAIN_FILE: &str = "train.txt";
pub const VALID_FILE: &str = "valid.txt";

/// Training and held-out text as bytes; a byte is a token.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub train: Vec<u8>,
    pub valid: Vec<u8>,
}

/// A batch of windows: inputs [batch, context] and the next bytes, targets [batch, context].
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
}

impl Corpus {
    /// Reads `dir/train.txt` and `dir/valid.txt`.
    pub fn load(dir: &Path) -> Result<Self, TrainError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })
        };
        let (train, valid) = match (read(TRAIN_FILE), read(VALID_FILE)) {
            (Ok(t), Ok(v)) => (t, v),
            (Err(e), _) | (_, Err(e)) => {
                return Err(TrainError::Input(format!(
                    "{e}; run train/fetch_data.sh to download and split the corpus"
                )));
            }
        };
        Ok(Self { train, valid })
    }

    /// Checks that both parts hold at least one window of `context + 1` bytes.
    pub fn check(&self, context: usize) -> Result<(), TrainError> {
        for (name, text) in [(TRAIN_FILE, &self.train), (VALID_FILE, &self.valid)] {
            if text.len() <= context {
                return Err(TrainError::Input(format!(
                    "{name} has {} bytes, fewer than one window of {} (context + 1)",
                    text.len(),
                    context + 1
                )));
            }
        }
        Ok(())
    }

    /// `batch` windows of the training text at offsets drawn from `rng`.
    pub fn sample(
        &self,
        rng: &mut SplitMix64,
        batch: usize,
        context: usize,
    ) -> Result<Batch, TrainError> {
        let starts: Vec<usize> = (0..batch)
            .map(|_| rng.below((self.train.len() - context) as u64) as usize)
            .collect();
        windows(&self.train, &starts, context)
    }

    /// The fixed validation sample: `count` windows spread evenly over the held-out text,
    /// in batches of at most `batch`. The same for every step and every run.
    pub fn validation(
        &self,
        count: usize,
        batch: usize,
        context: usize,
    ) -> Result<Vec<Batch>, TrainError> {
        let last = self.valid.len() - context - 1; // the largest start
        let starts: Vec<usize> = (0..count)
            .map(|i| {
                if count == 1 {
                    0
                } else {
                    i * last / (count - 1)
                }
            })
            .collect();
        starts
            .chunks(batch.max(1))
            .map(|chunk| windows(&self.valid, chunk, context))
            .collect()
    }
}

/// Windows text[s..s + context] and their targets text[s + 1..s + context + 1].
fn windows(text: &[u8], starts: &[usize], context: usize) -> Result<Batch, TrainError> {
    let mut inputs = Vec::with_capacity(starts.len() * context);
    let mut targets = Vec::with_capacity(starts.len() * context);
    for &s in starts {
        inputs.extend(text[s..s + context].iter().map(|&b| b as u32));
        targets.extend(text[s + 1..s + context + 1].iter().map(|&b| b as u32));
    }
    let shape = (starts.len(), context);
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, shape, &Device::Cpu)?,
        targets: Tensor::from_vec(targets, shape, &Device::Cpu)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_pair_each_byte_with_the_next() {
        let corpus = Corpus {
            train: b"abcdefghij".to_vec(),
            valid: b"0123456789".to_vec(),
        };
        corpus.check(4).unwrap();
        assert!(corpus.check(10).is_err());
        let mut rng = SplitMix64(1);
        for _ in 0..20 {
            let b = corpus.sample(&mut rng, 3, 4).unwrap();
            let i = b.inputs.to_vec2::<u32>().unwrap();
            let t = b.targets.to_vec2::<u32>().unwrap();
            for (i, t) in i.iter().zip(&t) {
                assert_eq!(&i[1..], &t[..3]);
                assert!(*t.last().unwrap() <= b'j' as u32);
            }
        }
        let val = corpus.validation(3, 2, 4).unwrap();
        assert_eq!(val.len(), 2);
        let first = val[0].inputs.to_vec2::<u32>().unwrap();
        let last = val[1].targets.to_vec2::<u32>().unwrap();
        assert_eq!(first[0], b"0123".map(u32::from));
        assert_eq!(last[0], b"6789".map(u32::from)); // the last window ends at the end
    }
}
