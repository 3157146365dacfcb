//! Storage form of a quantized tensor: every code as a b-bit two's-complement field,
//! fields back to back in a little-endian bit stream, plus the float32 alpha.
use super::{LevelSet, Quantized, FLOAT_BITS};
use anyhow::{bail, ensure, Context, Result};
use tch::{Device, Kind, Tensor};

/// A packed tensor; `data` holds `ceil(numel * bits / 8)` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedTensor {
    pub shape: Vec<i64>,
    pub bits: u32,
    pub levels: LevelSet,
    pub alpha: f32,
    pub data: Vec<u8>,
}

impl PackedTensor {
    /// Bytes of codes plus alpha; equals [`storage_bytes`] of the shape and bit-width.
    pub fn storage_bytes(&self) -> u64 {
        self.data.len() as u64 + 4
    }
}

/// Bytes to store `numel` weights at `bits`: packed codes plus one float32 alpha, or
/// plain float32 for [`FLOAT_BITS`].
pub fn storage_bytes(numel: u64, bits: u32) -> u64 {
    if bits == FLOAT_BITS {
        numel * 4
    } else {
        (numel * u64::from(bits)).div_ceil(8) + 4
    }
}

fn check_fits(levels: LevelSet, bits: u32) -> Result<()> {
    ensure!(
        (2..=8).contains(&bits),
        "codes are packed with 2..=8 bits, not {bits}"
    );
    ensure!(
        levels.max_code() < 1 << (bits - 1),
        "codes up to ±{} of {levels:?} do not fit in {bits} bits",
        levels.max_code()
    );
    Ok(())
}

/// Packs `q`'s codes into `bits`-bit fields (copies them to the host).
pub fn pack(q: &Quantized, bits: u32) -> Result<PackedTensor> {
    check_fits(q.levels, bits)?;
    let codes = Vec::<i8>::try_from(&q.codes.flatten(0, -1).to_device(Device::Cpu))
        .context("reading the codes")?;
    let max_code = q.levels.max_code();
    let mask = (1u64 << bits) - 1;
    let mut data = Vec::with_capacity((codes.len() * bits as usize).div_ceil(8));
    let (mut pending, mut pending_bits) = (0u64, 0u32);
    for &code in &codes {
        ensure!(
            code.unsigned_abs() as u32 <= max_code,
            "code {code} is outside {:?}",
            q.levels
        );
        pending |= (code as u8 as u64 & mask) << pending_bits;
        pending_bits += bits;
        while pending_bits >= 8 {
            data.push(pending as u8);
            pending >>= 8;
            pending_bits -= 8;
        }
    }
    if pending_bits > 0 {
        data.push(pending as u8);
    }
    Ok(PackedTensor {
        shape: q.codes.size(),
        bits,
        levels: q.levels,
        alpha: q.alpha() as f32,
        data,
    })
}

/// The quantized tensor (on the CPU) that `packed` stores.
pub fn unpack(packed: &PackedTensor) -> Result<Quantized> {
    let bits = packed.bits;
    check_fits(packed.levels, bits)?;
    let mut numel = 1usize;
    for &dim in &packed.shape {
        let dim = usize::try_from(dim)
            .with_context(|| format!("negative dimension in shape {:?}", packed.shape))?;
        numel = numel
            .checked_mul(dim)
            .with_context(|| format!("shape {:?} is too large", packed.shape))?;
    }
    let expected = numel.checked_mul(bits as usize).map(|b| b.div_ceil(8));
    if expected != Some(packed.data.len()) {
        bail!(
            "{} bytes of codes for shape {:?} at {bits} bits, expected {expected:?}",
            packed.data.len(),
            packed.shape
        );
    }
    let max_code = packed.levels.max_code() as i32;
    let mut codes = Vec::with_capacity(numel);
    let (mut pending, mut pending_bits) = (0u64, 0u32);
    let mut bytes = packed.data.iter();
    for _ in 0..numel {
        while pending_bits < bits {
            let byte = bytes.next().context("codes end early")?;
            pending |= u64::from(*byte) << pending_bits;
            pending_bits += 8;
        }
        let field = (pending & ((1 << bits) - 1)) as i32;
        pending >>= bits;
        pending_bits -= bits;
        // Sign-extend the b-bit field.
        let code = if field >= 1 << (bits - 1) {
            field - (1 << bits)
        } else {
            field
        };
        ensure!(
            code.abs() <= max_code,
            "code {code} is outside {:?}",
            packed.levels
        );
        codes.push(code as i8);
    }
    Ok(Quantized {
        alpha: Tensor::from(packed.alpha),
        codes: Tensor::from_slice(&codes)
            .reshape(&packed.shape)
            .to_kind(Kind::Int8),
        levels: packed.levels,
    })
}
