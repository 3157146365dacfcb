//! The `.npy` format's float32 case, read strictly: little-endian `<f4`, C or Fortran
//! order, and a data length that matches the shape (tch's reader does not check it).
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use tch::Tensor;

/// Reads a little-endian float32 .npy file (C or Fortran order) into a CPU tensor.
/// (tch's reader does not check the data length against the shape.)
pub fn read_f32_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_f32_npy(&bytes).with_context(|| format!("{} is not a float32 .npy file", path.display()))
}

fn parse_f32_npy(bytes: &[u8]) -> Result<Tensor> {
    ensure!(
        bytes.len() >= 10 && bytes.starts_with(b"\x93NUMPY"),
        "no .npy magic string"
    );
    let (header_len, header_start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            let len = bytes.get(8..12).context("the header length is cut short")?;
            (
                u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize,
                12,
            )
        }
        version => bail!("unsupported .npy version {version}"),
    };
    let data_start = header_start + header_len;
    let header = bytes
        .get(header_start..data_start)
        .context("the header is cut short")?;
    let header = std::str::from_utf8(header).context("the header is not text")?;
    let descr = header_value(header, "descr")?;
    ensure!(
        matches!(descr, "'<f4'" | "'=f4'"),
        "dtype {descr}, expected '<f4' (little-endian float32)"
    );
    let fortran_order = match header_value(header, "fortran_order")? {
        "False" => false,
        "True" => true,
        other => bail!("fortran_order {other} is neither True nor False"),
    };
    let shape_text = header_value(header, "shape")?;
    let dims = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .with_context(|| format!("shape {shape_text} is not a tuple"))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<i64>()
                .ok()
                .filter(|&d| d >= 0)
                .with_context(|| format!("bad dimension {d:?} in shape {shape_text}"))
        })
        .collect::<Result<Vec<i64>>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .with_context(|| format!("shape {shape_text} is too large"))?;
    let data = &bytes[data_start..];
    ensure!(
        numel.checked_mul(4) == Some(data.len()),
        "{} data bytes for shape {shape_text}, expected {} (4 per float32)",
        data.len(),
        numel.saturating_mul(4)
    );
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let flat = Tensor::from_slice(&values);
    Ok(if fortran_order {
        // Column-major data is the row-major tensor of the reversed shape, transposed.
        let reversed: Vec<i64> = shape.iter().rev().copied().collect();
        let dims: Vec<i64> = (0..shape.len() as i64).rev().collect();
        flat.reshape(&reversed).permute(&dims).contiguous()
    } else {
        flat.reshape(&shape)
    })
}

/// The raw text of `key`'s value in a .npy header dict: a quoted string with its quotes,
/// a parenthesized tuple with its parentheses, or a bare word.
fn header_value<'a>(header: &'a str, key: &str) -> Result<&'a str> {
    let quoted = format!("'{key}'");
    let after_key = header
        .find(&quoted)
        .map(|at| &header[at + quoted.len()..])
        .with_context(|| format!("no {quoted} in the header"))?;
    let value = after_key
        .trim_start()
        .strip_prefix(':')
        .with_context(|| format!("no ':' after {quoted}"))?
        .trim_start();
    let end = match value.chars().next() {
        Some('\'') => value[1..].find('\'').map(|i| i + 2),
        Some('(') => value.find(')').map(|i| i + 1),
        Some(_) => value.find([',', '}']),
        None => None,
    }
    .with_context(|| format!("the value of {quoted} is cut short"))?;
    Ok(&value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn floats(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn reads_c_and_fortran_order() {
        let data = floats(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let c = parse_f32_npy(&npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n",
            &data,
        ))
        .unwrap();
        assert_eq!(c.size(), vec![2, 3]);
        assert_eq!(c.double_value(&[0, 1]), 2.0);
        let f = parse_f32_npy(&npy(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n",
            &data,
        ))
        .unwrap();
        assert_eq!(f.size(), vec![2, 3]);
        assert_eq!(f.double_value(&[0, 1]), 3.0);
        let scalar = parse_f32_npy(&npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n",
            &floats(&[7.5]),
        ))
        .unwrap();
        assert_eq!((scalar.size(), scalar.double_value(&[])), (vec![], 7.5));
    }

    #[test]
    fn rejects_malformed_headers_and_data() {
        let data = floats(&[1.0, 2.0]);
        for (header, data, needle) in [
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                &data[..],
                "dtype '<f8'",
            ),
            (
                "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
                &data[..],
                "dtype '>f4'",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
                &data[..],
                "expected 12",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                &data[..7],
                "7 data bytes",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
                &data[..],
                "bad dimension",
            ),
            (
                "{'descr': '<f4', 'shape': (2,), }",
                &data[..],
                "fortran_order",
            ),
        ] {
            let err = format!("{:#}", parse_f32_npy(&npy(header, data)).unwrap_err());
            assert!(err.contains(needle), "{header}: {err}");
        }
        assert!(parse_f32_npy(b"not an npy file").is_err());
        assert!(parse_f32_npy(
            &npy(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                &data
            )[..12]
        )
        .is_err());
    }
}
