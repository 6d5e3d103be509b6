"""`--triton-repo`: a Triton / KServe model repository entry whose config.pbtxt is valid ModelConfig text."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from exporters.bundle import read_metadata
from exporters.errors import ExportError
from exporters.triton import DEFAULT_MAX_BATCH_SIZE, write_triton_model
from training.checkpoint import file_sha256

_FIELD = descriptor_pb2.FieldDescriptorProto


def _message(name: str, fields: list[tuple[str, int, int, str | None]]) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=name)
    for number, (field_name, field_type, label, type_name) in enumerate(fields, 1):
        field = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if type_name:
            field.type_name = type_name
    return message


def minimal_model_config_class():
    """The subset of Triton's model_config.proto (inference.ModelConfig) that the exporter writes."""
    optional, repeated = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(
        name="mini_model_config.proto", package="mini", syntax="proto3"
    )
    data_type = proto.enum_type.add(name="DataType")
    for number, value in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_FP16", "TYPE_FP32"]):
        data_type.value.add(name=value, number=number)
    tensor_fields = [
        ("name", _FIELD.TYPE_STRING, optional, None),
        ("data_type", _FIELD.TYPE_ENUM, optional, ".mini.DataType"),
        ("dims", _FIELD.TYPE_INT64, repeated, None),
        ("reshape", _FIELD.TYPE_MESSAGE, optional, ".mini.ModelTensorReshape"),
    ]
    proto.message_type.extend(
        [
            _message("ModelTensorReshape", [("shape", _FIELD.TYPE_INT64, repeated, None)]),
            _message("ModelInput", tensor_fields),
            _message("ModelOutput", tensor_fields),
            _message(
                "ModelDynamicBatching", [("max_queue_delay_microseconds", _FIELD.TYPE_UINT64, optional, None)]
            ),
            _message(
                "ModelConfig",
                [
                    ("name", _FIELD.TYPE_STRING, optional, None),
                    ("platform", _FIELD.TYPE_STRING, optional, None),
                    ("max_batch_size", _FIELD.TYPE_INT32, optional, None),
                    ("input", _FIELD.TYPE_MESSAGE, repeated, ".mini.ModelInput"),
                    ("output", _FIELD.TYPE_MESSAGE, repeated, ".mini.ModelOutput"),
                    ("dynamic_batching", _FIELD.TYPE_MESSAGE, optional, ".mini.ModelDynamicBatching"),
                ],
            ),
        ]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("mini.ModelConfig"))


def _data_type_name(tensor) -> str:
    enum = tensor.DESCRIPTOR.fields_by_name["data_type"].enum_type
    return enum.values_by_number[tensor.data_type].name


def _check_config(config, metadata: dict) -> None:
    obs_dim, action_dim = metadata["obs_dim"], metadata["action_dim"]
    assert config.name == metadata["name"]
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert config.HasField("dynamic_batching")
    inputs = {tensor.name: list(tensor.dims) for tensor in config.input}
    outputs = {tensor.name: list(tensor.dims) for tensor in config.output}
    assert inputs == {"observation": [obs_dim], "noise": [-1, action_dim]}  # no batch dim; -1 is K
    assert outputs == {"action": [action_dim], "q_value": [1], "candidates": [-1, action_dim]}
    q_value = next(tensor for tensor in config.output if tensor.name == "q_value")
    assert q_value.HasField("reshape") and list(q_value.reshape.shape) == []  # [B] on the wire
    assert {_data_type_name(tensor) for tensor in [*config.input, *config.output]} == {"TYPE_FP32"}


@pytest.fixture(scope="module")
def triton_model(dit_export):
    repository = dit_export.result.triton_config.parent.parent
    return repository / read_metadata(dit_export.bundle)["name"]


def test_repository_layout_holds_the_bundles_graph_unchanged(dit_export, triton_model):
    assert sorted(p.name for p in triton_model.iterdir()) == ["1", "config.pbtxt"]
    assert [p.name for p in (triton_model / "1").iterdir()] == ["model.onnx"]
    assert file_sha256(triton_model / "1" / "model.onnx") == file_sha256(dit_export.bundle / "policy.onnx")


def test_config_parses_as_model_config_text(dit_export, triton_model):
    config = text_format.Parse((triton_model / "config.pbtxt").read_text(), minimal_model_config_class()())
    _check_config(config, read_metadata(dit_export.bundle))


def test_config_parses_with_tritons_own_model_config_schema(dit_export, triton_model):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    config = text_format.Parse((triton_model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    _check_config(config, read_metadata(dit_export.bundle))
    assert config.dynamic_batching.max_queue_delay_microseconds > 0


def test_existing_triton_model_is_refused_without_overwrite(tmp_path, mlp_export):
    metadata = read_metadata(mlp_export.bundle)
    write_triton_model(tmp_path, mlp_export.bundle, metadata, overwrite=False)
    with pytest.raises(ExportError, match="already exists"):
        write_triton_model(tmp_path, mlp_export.bundle, metadata, overwrite=False)
    write_triton_model(tmp_path, mlp_export.bundle, metadata, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [metadata["name"]]


def test_chunked_config_declares_the_chunk_axes_after_the_implicit_batch(chunked_mlp_export):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    config_path = chunked_mlp_export.result.triton_config
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    inputs = {tensor.name: list(tensor.dims) for tensor in config.input}
    outputs = {tensor.name: list(tensor.dims) for tensor in config.output}
    assert inputs == {"observation": [17], "noise": [-1, 5, 4]}  # K, H, d
    assert outputs == {"action": [5, 4], "q_value": [1], "candidates": [-1, 5, 4]}
    assert file_sha256(config_path.parent / "1" / "model.onnx") == file_sha256(
        chunked_mlp_export.bundle / "policy.onnx"
    )
