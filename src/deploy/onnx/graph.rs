//! The graph builder: nodes, initializers and fresh value names, assembled into the
//! ONNX model ([`GraphBuilder`], [`Attr`]).
use super::OPSET;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::BTreeMap;

/// The IR version that goes with [`OPSET`].
const IR_VERSION: i64 = 8;

/// An attribute value of a node.
pub enum Attr<'a> {
    Int(i64),
    Ints(&'a [i64]),
    Float(f32),
    Str(&'a str),
}

/// Builds one ONNX graph: nodes in order, initializers, unique value names.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next: usize,
}

impl GraphBuilder {
    /// A fresh value name.
    pub(super) fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// Adds a node with `outputs` fresh outputs and returns their names.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<String> {
        let names: Vec<String> = (0..outputs).map(|_| self.fresh(op)).collect();
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.name = names[0].clone();
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = names.clone();
        node.attribute = attrs
            .iter()
            .map(|(name, value)| attribute(name, value))
            .collect();
        self.nodes.push(node);
        names
    }

    /// Adds a node with one output.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.node_n(op, inputs, 1, attrs).remove(0)
    }

    /// Gives `value`, the output of a node added last (before any node reads it), the
    /// stable `name`: the graph's outputs and the intermediates of [`STAGES`](super::STAGES).
    pub(super) fn rename(&mut self, value: &str, name: &str) -> String {
        let node = self
            .nodes
            .iter_mut()
            .rev()
            .find(|n| n.output.iter().any(|o| o == value))
            .expect("a value produced by a node");
        for output in &mut node.output {
            if output == value {
                *output = name.into();
            }
        }
        name.into()
    }

    pub(super) fn initializer(
        &mut self,
        name: String,
        dims: &[i64],
        data_type: DataType,
        raw: Vec<u8>,
    ) -> String {
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = dims.to_vec();
        t.data_type = data_type as i32;
        t.raw_data = raw;
        self.initializers.push(t);
        name
    }

    /// A float32 initializer named `name`.
    pub fn f32_named(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name.into(), dims, DataType::FLOAT, raw)
    }

    /// A float32 constant.
    pub fn f32s(&mut self, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh("const_f32");
        self.f32_named(&name, dims, values)
    }

    pub fn f64s(&mut self, dims: &[i64], values: &[f64]) -> String {
        let name = self.fresh("const_f64");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::DOUBLE, raw)
    }

    pub fn i64s(&mut self, dims: &[i64], values: &[i64]) -> String {
        let name = self.fresh("const_i64");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::INT64, raw)
    }

    pub fn i32s(&mut self, dims: &[i64], values: &[i32]) -> String {
        let name = self.fresh("const_i32");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::INT32, raw)
    }

    pub fn i8s(&mut self, dims: &[i64], values: &[i8]) -> String {
        let name = self.fresh("const_i8");
        let raw = values.iter().map(|&v| v as u8).collect();
        self.initializer(name, dims, DataType::INT8, raw)
    }

    pub fn u8s(&mut self, dims: &[i64], values: &[u8]) -> String {
        let name = self.fresh("const_u8");
        self.initializer(name, dims, DataType::UINT8, values.to_vec())
    }

    pub fn u8s_named(&mut self, name: &str, values: &[u8]) -> String {
        self.initializer(
            name.into(),
            &[values.len() as i64],
            DataType::UINT8,
            values.to_vec(),
        )
    }

    /// `x` converted to `to`.
    pub fn cast(&mut self, x: &str, to: DataType) -> String {
        self.node("Cast", &[x], &[("to", Attr::Int(to as i64))])
    }

    /// A 1-D int64 vector constant.
    pub fn vec_i64(&mut self, values: &[i64]) -> String {
        self.i64s(&[values.len() as i64], values)
    }

    /// The model: this graph with `inputs` and `outputs` (name, element type, dims; a
    /// negative dim is symbolic) and string metadata.
    pub fn finish(
        self,
        inputs: &[(&str, DataType, &[i64])],
        outputs: &[(&str, DataType, &[i64])],
        metadata: &BTreeMap<String, String>,
    ) -> ModelProto {
        let mut graph = GraphProto::new();
        graph.name = "lbwnet".into();
        graph.node = self.nodes;
        graph.initializer = self.initializers;
        graph.input = inputs
            .iter()
            .map(|(n, t, d)| value_info(n, *t, d))
            .collect();
        graph.output = outputs
            .iter()
            .map(|(n, t, d)| value_info(n, *t, d))
            .collect();
        let mut model = ModelProto::new();
        model.ir_version = IR_VERSION;
        model.producer_name = "lbwnet".into();
        model.producer_version = env!("CARGO_PKG_VERSION").into();
        let mut opset = OperatorSetIdProto::new();
        opset.domain = String::new();
        opset.version = OPSET;
        model.opset_import = vec![opset];
        model.metadata_props = metadata
            .iter()
            .map(|(k, v)| {
                let mut entry = StringStringEntryProto::new();
                entry.key = k.clone();
                entry.value = v.clone();
                entry
            })
            .collect();
        model.graph = Some(graph).into();
        model
    }

    /// `ConstantOfShape(shape)` filled with the one `data_type` value whose little-endian
    /// bytes are `raw`.
    pub(super) fn node_constant_of_shape(
        &mut self,
        shape: &str,
        data_type: DataType,
        raw: Vec<u8>,
    ) -> String {
        let mut value = TensorProto::new();
        value.data_type = data_type as i32;
        value.dims = vec![1];
        value.raw_data = raw;
        let name = self.fresh("ConstantOfShape");
        let mut node = NodeProto::new();
        node.op_type = "ConstantOfShape".into();
        node.name = name.clone();
        node.input = vec![shape.into()];
        node.output = vec![name.clone()];
        let mut a = AttributeProto::new();
        a.name = "value".into();
        a.type_ = AttributeType::TENSOR.into();
        a.t = Some(value).into();
        node.attribute = vec![a];
        self.nodes.push(node);
        name
    }
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    match value {
        Attr::Int(i) => {
            a.type_ = AttributeType::INT.into();
            a.i = *i;
        }
        Attr::Ints(v) => {
            a.type_ = AttributeType::INTS.into();
            a.ints = v.to_vec();
        }
        Attr::Float(f) => {
            a.type_ = AttributeType::FLOAT.into();
            a.f = *f;
        }
        Attr::Str(s) => {
            a.type_ = AttributeType::STRING.into();
            a.s = s.as_bytes().to_vec();
        }
    }
    a
}

fn value_info(name: &str, elem: DataType, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let mut dim = tensor_shape_proto::Dimension::new();
            if d >= 0 {
                dim.set_dim_value(d);
            } else {
                dim.set_dim_param(format!("{name}_{i}"));
            }
            dim
        })
        .collect();
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = elem as i32;
    tensor.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.set_tensor_type(tensor);
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    info.type_ = Some(ty).into();
    info
}
