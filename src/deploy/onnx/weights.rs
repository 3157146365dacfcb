//! The weights as initializers: float tensors as they are, quantized ones as their packed
//! b-bit codes and alpha, decoded in the graph through the level tables (to float
//! `alpha * level`, or for the int8 export to the integers `level / unit`).
use super::graph::Attr;
use super::int8::{int8_refusal, int8_unit};
use super::Writer;
use crate::deploy::format::{ALPHA_SUFFIX, CODES_SUFFIX};
use crate::detect::architecture::Weighted;
use anyhow::{ensure, Context, Result};
use onnx_protobuf::tensor_proto::DataType;

impl Writer<'_> {
    /// A float tensor of the file as an initializer of its own name, reshaped to `dims`.
    pub(super) fn float_param(&mut self, name: &str, dims: &[i64]) -> Result<String> {
        let values = self.file_f32(name, dims)?;
        Ok(self.g.f32_named(name, dims, &values))
    }

    /// The values of a float tensor of the file, which must hold `dims`' count.
    pub(super) fn file_f32(&self, name: &str, dims: &[i64]) -> Result<Vec<f32>> {
        let tensor = self
            .file
            .tensors
            .get(name)
            .with_context(|| format!("tensor {name} is missing"))?;
        let values = tensor.to_f32().with_context(|| format!("tensor {name}"))?;
        ensure!(
            values.len() as i64 == dims.iter().product::<i64>(),
            "tensor {name} has {} values, {dims:?} expected",
            values.len()
        );
        Ok(values)
    }

    /// A layer's weight (decoded in the graph when quantized) and bias.
    pub(super) fn weights(&mut self, weight: &Weighted) -> Result<(String, Option<String>)> {
        let name = format!("{}.weight", weight.name);
        let w = if weight.quantized {
            self.quantized_weight(&name, &weight.shape)?
        } else {
            self.float_param(&name, &weight.shape)?
        };
        let b = if weight.bias {
            Some(self.float_param(&format!("{}.bias", weight.name), &[weight.shape[0]])?)
        } else {
            None
        };
        Ok((w, b))
    }

    /// `alpha * level(field)` for every packed field of `name`, reshaped to `shape`: the
    /// graph's copy of [`crate::quant::unpack`] followed by the dequantization.
    fn quantized_weight(&mut self, name: &str, shape: &[i64]) -> Result<String> {
        Ok(self.decoded_weight(name, shape, false)?.0)
    }

    /// The int8 integers `level(field) / unit` of `name`, reshaped to `shape`, and their
    /// scale `alpha * unit` (`unit` the smallest nonzero level): exactly Q(W).
    pub(super) fn int8_weight(&mut self, name: &str, shape: &[i64]) -> Result<(String, f64)> {
        let (values, scale) = self.decoded_weight(name, shape, true)?;
        Ok((values, scale.expect("an int8 weight has a scale")))
    }

    /// A quantized weight decoded in the graph: to float (scale none), or to int8 with
    /// its scale.
    fn decoded_weight(
        &mut self,
        name: &str,
        shape: &[i64],
        int8: bool,
    ) -> Result<(String, Option<f64>)> {
        let layer = self
            .file
            .meta
            .layers
            .iter()
            .find(|l| l.name == name)
            .with_context(|| format!("layer {name} is not in the metadata's quantized layers"))?
            .clone();
        let packed = self.file.packed(&layer)?;
        let bits = i64::from(packed.bits);
        let numel: i64 = shape.iter().product();
        let layout = FieldLayout::new(bits);
        let groups = (numel + layout.fields - 1) / layout.fields;
        let group_bytes = usize::try_from(groups * layout.bytes)?;
        ensure!(
            packed.data.len() <= group_bytes,
            "layer {name}: {} bytes of codes for {numel} weights at {bits} bits",
            packed.data.len()
        );
        let scale = if int8 {
            let unit =
                int8_unit(&packed.levels).with_context(|| int8_refusal(name, packed.bits))?;
            Some(f64::from(packed.alpha) * unit)
        } else {
            None
        };
        let table = self.field_table(&packed.levels, packed.bits, int8);
        let g = &mut self.g;
        let codes = g.u8s_named(&format!("{name}{CODES_SUFFIX}"), &packed.data);
        let alpha =
            (!int8).then(|| g.f32_named(&format!("{name}{ALPHA_SUFFIX}"), &[], &[packed.alpha]));
        // Zero bytes up to whole groups, and one more when fields straddle bytes, so that
        // the last byte has a next one.
        let padded = group_bytes + usize::from(!layout.byte_aligned());
        let pad_len = padded - packed.data.len();
        let bytes = if pad_len > 0 {
            let pad = g.fresh("pad");
            let pad = g.initializer(pad, &[pad_len as i64], DataType::UINT8, vec![0; pad_len]);
            g.node("Concat", &[&codes, &pad], &[("axis", Attr::Int(0))])
        } else {
            codes
        };
        // int32 indices: the folded intermediates are what loading costs.
        let bytes = g.cast(&bytes, DataType::INT32);
        let scaled = match alpha {
            Some(alpha) => g.node("Mul", &[&table, &alpha], &[]),
            None => table,
        };
        let values = if layout.byte_aligned() {
            // Each byte holds whole fields: its row of the table holds their levels.
            g.node("Gather", &[&scaled, &bytes], &[])
        } else {
            // Every byte with the next one as a 16-bit little-endian window; field j of
            // a group is read from the window at its first byte, in its row of the table.
            let (zero, last, one, end) = (
                g.vec_i64(&[0]),
                g.vec_i64(&[padded as i64 - 1]),
                g.vec_i64(&[1]),
                g.vec_i64(&[padded as i64]),
            );
            let low = g.node("Slice", &[&bytes, &zero, &last], &[]);
            let high = g.node("Slice", &[&bytes, &one, &end], &[]);
            let radix = g.i32s(&[], &[256]);
            let high = g.node("Mul", &[&high, &radix], &[]);
            let windows = g.node("Add", &[&low, &high], &[]);
            let grouped = g.vec_i64(&[groups, layout.bytes]);
            let windows = g.node("Reshape", &[&windows, &grouped], &[]);
            let first_byte = g.vec_i64(&layout.first_bytes());
            let windows = g.node(
                "Gather",
                &[&windows, &first_byte],
                &[("axis", Attr::Int(1))],
            );
            let rows = g.i32s(&[1, layout.fields], &layout.table_offsets());
            let index = g.node("Add", &[&windows, &rows], &[]);
            g.node("Gather", &[&scaled, &index], &[])
        };
        // (Each reshape of a folded weight is one more copy of it at load.)
        let values = if groups * layout.fields > numel {
            let flat = g.vec_i64(&[-1]);
            let values = g.node("Reshape", &[&values, &flat], &[]);
            let (zero, end) = (g.vec_i64(&[0]), g.vec_i64(&[numel]));
            g.node("Slice", &[&values, &zero, &end], &[])
        } else {
            values
        };
        let dims = g.vec_i64(shape);
        let weight = g.node("Reshape", &[&values, &dims], &[]);
        Ok((g.rename(&weight, name), scale))
    }

    /// The levels of the fields a byte (fields that do not straddle bytes: `[256, 8/b]`)
    /// or a 16-bit window holds (`[fields * 65536]`, row j for the field starting at bit
    /// `j*b mod 8` of its first byte), computed in the graph from the `2^b`-entry level
    /// table: nothing this size is stored.
    fn field_table(&mut self, levels: &crate::quant::LevelSet, bits: u32, int8: bool) -> String {
        let key = format!("{levels:?}/{bits}/fields/{int8}");
        if let Some(name) = self.level_tables.get(&key) {
            return name.clone();
        }
        let levels = self.level_table(levels, bits, int8);
        let layout = FieldLayout::new(i64::from(bits));
        let g = &mut self.g;
        let windows = if layout.byte_aligned() { 256 } else { WINDOWS };
        let (start, end, step) = (
            g.i32s(&[], &[0]),
            g.i32s(&[], &[windows]),
            g.i32s(&[], &[1]),
        );
        let windows = g.node("Range", &[&start, &end, &step], &[]);
        let divisors: Vec<i32> = layout.shifts().iter().map(|s| 1 << s).collect();
        let fields = if layout.byte_aligned() {
            // [256, fields]: byte x, field j.
            let column = g.vec_i64(&[-1, 1]);
            let windows = g.node("Reshape", &[&windows, &column], &[]);
            let divisors = g.i32s(&[1, layout.fields], &divisors);
            g.node("Div", &[&windows, &divisors], &[])
        } else {
            // [fields, 65536] flattened: field j, window x.
            let divisors = g.i32s(&[layout.fields, 1], &divisors);
            let shifted = g.node("Div", &[&windows, &divisors], &[]);
            let flat = g.vec_i64(&[-1]);
            g.node("Reshape", &[&shifted, &flat], &[])
        };
        let modulus = g.i32s(&[], &[1 << bits]);
        let fields = g.node("Mod", &[&fields, &modulus], &[]);
        let table = g.node("Gather", &[&levels, &fields], &[]);
        self.level_tables.insert(key, table.clone());
        table
    }

    /// The float value of every b-bit field: a two's-complement code's signed level
    /// magnitude (fields outside the level set never occur; they map to 0); for int8,
    /// that magnitude over the smallest one, as int8.
    fn level_table(&mut self, levels: &crate::quant::LevelSet, bits: u32, int8: bool) -> String {
        let key = format!("{levels:?}/{bits}/{int8}");
        if let Some(name) = self.level_tables.get(&key) {
            return name.clone();
        }
        let max_code = levels.max_code() as i64;
        let table: Vec<f32> = (0..1i64 << bits)
            .map(|field| {
                let code = if field >= 1 << (bits - 1) {
                    field - (1 << bits)
                } else {
                    field
                };
                if code.abs() > max_code {
                    return 0.0;
                }
                let magnitude = levels.magnitude(code.unsigned_abs() as u32) as f32;
                if code < 0 {
                    -magnitude
                } else {
                    magnitude
                }
            })
            .collect();
        let dims = [table.len() as i64];
        let name = match int8_unit(levels).filter(|_| int8) {
            Some(unit) => {
                let integers: Vec<i8> = table
                    .iter()
                    .map(|&v| (f64::from(v) / unit).round() as i8)
                    .collect();
                self.g.i8s(&dims, &integers)
            }
            None => self.g.f32s(&dims, &table),
        };
        self.level_tables.insert(key, name.clone());
        name
    }
}

/// Distinct 16-bit windows.
const WINDOWS: i32 = 1 << 16;

/// How b-bit fields packed back to back (least significant bit first) fall into bytes:
/// groups of `fields` fields fill `bytes` whole bytes, and every field lies within the
/// two bytes from the one it starts in (b <= 8).
struct FieldLayout {
    bits: i64,
    fields: i64,
    bytes: i64,
}

impl FieldLayout {
    fn new(bits: i64) -> Self {
        let fields = 8 / gcd(bits, 8);
        FieldLayout {
            bits,
            fields,
            bytes: fields * bits / 8,
        }
    }

    /// Whether every field lies within one byte (b divides 8).
    fn byte_aligned(&self) -> bool {
        self.bytes == 1
    }

    /// The byte of its group each field starts in.
    fn first_bytes(&self) -> Vec<i64> {
        (0..self.fields).map(|j| j * self.bits / 8).collect()
    }

    /// The bit of that byte each field starts at (the byte-aligned layout's fields are
    /// all in the group's one byte).
    fn shifts(&self) -> Vec<i64> {
        (0..self.fields).map(|j| j * self.bits % 8).collect()
    }

    /// Each field's row in the window table, as an offset into it flattened.
    fn table_offsets(&self) -> Vec<i32> {
        (0..self.fields as i32).map(|j| j * WINDOWS).collect()
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
