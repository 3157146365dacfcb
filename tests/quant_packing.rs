//! Packing codes into b-bit fields: round trips, sizes, and corrupt input.
use lbwnet::quant::{pack, quantize_codes, storage_bytes, unpack, Method, QuantSpec, FLOAT_BITS};
use tch::{Device, Kind, Tensor};

fn specs() -> Vec<QuantSpec> {
    let mut specs = vec![QuantSpec::new(Method::Ternary, 2, None).unwrap()];
    for bits in 2..=8 {
        for method in [Method::Lbw, Method::Exact, Method::Uniform] {
            specs.push(QuantSpec::new(method, bits, None).unwrap());
        }
    }
    specs
}

#[test]
fn pack_then_unpack_gives_back_codes_alpha_and_values() {
    tch::manual_seed(6);
    for shape in [vec![1], vec![7], vec![3, 5, 11]] {
        let w = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
        for spec in specs() {
            let q = quantize_codes(&w, &spec);
            let packed = pack(&q, spec.bits).unwrap();
            let numel = w.numel() as u64;
            assert_eq!(
                packed.data.len() as u64,
                (numel * u64::from(spec.bits)).div_ceil(8)
            );
            assert_eq!(packed.storage_bytes(), storage_bytes(numel, spec.bits));
            let back = unpack(&packed).unwrap();
            assert!(back.codes.equal(&q.codes), "{spec:?}, shape {shape:?}");
            assert_eq!(back.alpha(), q.alpha());
            assert!(back.dequantize().equal(&q.dequantize()), "{spec:?}");
        }
    }
}

#[test]
fn storage_sizes() {
    assert_eq!(storage_bytes(1000, FLOAT_BITS), 4000);
    assert_eq!(storage_bytes(1000, 6), 750 + 4);
    assert_eq!(storage_bytes(9, 3), 4 + 4);
    assert_eq!(storage_bytes(25_502_912, 2), 6_375_728 + 4);
}

#[test]
fn bad_packed_data_is_rejected() {
    let w = Tensor::from_slice(&[0.5f32, -0.25, 0.0, 1.0, 0.01]);
    let q = quantize_codes(&w, &QuantSpec::new(Method::Lbw, 4, None).unwrap());
    let packed = pack(&q, 4).unwrap();
    let mut short = packed.clone();
    short.data.pop();
    assert!(format!("{:#}", unpack(&short).unwrap_err()).contains("expected"));
    // 4-bit lbw codes go up to ±4; the field 0b0111 is 7.
    let mut out_of_range = packed.clone();
    out_of_range.data[0] = 0x77;
    assert!(format!("{:#}", unpack(&out_of_range).unwrap_err()).contains("outside"));
    let mut bad_shape = packed;
    bad_shape.shape = vec![-5];
    assert!(unpack(&bad_shape).is_err());
    // 8-bit uniform codes (up to ±127) do not fit in 4 bits.
    let uniform = quantize_codes(&w, &QuantSpec::new(Method::Uniform, 8, None).unwrap());
    assert!(pack(&uniform, 4).is_err());
}
