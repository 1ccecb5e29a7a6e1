"""Protocol buffers the local model server needs beyond `tensorflow_serving.apis`.

`tensorflow-serving-api` ships the service protos (`apis/`) and the model-server config
(`config/model_server_config_pb2`), but not three small messages that
`tensorflow_model_server` reads or serves:

* `tensorflow.serving.BatchingParameters` (`--batching_parameters_file`),
  from tensorflow_serving/servables/tensorflow/session_bundle_config.proto;
* `tensorflow.serving.MonitoringConfig` (`--monitoring_config_file`),
  from tensorflow_serving/config/monitoring_config.proto;
* `tensorflow.serving.SSLConfig` (`--ssl_config_file`), from ssl_config.proto;
* `grpc.health.v1.Health` (grpc/health/v1/health.proto); the `grpcio-health-checking`
  package carries it, and is used when installed.

They are declared here field for field (same names, types and numbers) in a private
descriptor pool, so the same text-format files parse and the same bytes go on the wire.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))


def _field(name: str, number: int, type_: int, type_name: str = "", repeated: bool = False):
    f = _F(name=name, number=number, type=type_, label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        f.type_name = type_name
    return f


def _file(name: str, package: str, messages: dict[str, list], deps=(), enums=None) -> None:
    fdp = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3", dependency=list(deps))
    for mname, fields in messages.items():
        m = fdp.message_type.add(name=mname)
        m.field.extend(fields)
        for ename, values in (enums or {}).get(mname, {}).items():
            e = m.enum_type.add(name=ename)
            for vname, num in values:
                e.value.add(name=vname, number=num)
    _POOL.Add(fdp)


_I64 = ".google.protobuf.Int64Value"
_file(
    "tfcluster/serving/session_bundle_config.proto",
    "tensorflow.serving",
    {
        "BatchingParameters": [
            _field("max_batch_size", 1, _F.TYPE_MESSAGE, _I64),
            _field("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _I64),
            _field("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _I64),
            _field("num_batch_threads", 4, _F.TYPE_MESSAGE, _I64),
            _field("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
            _field("allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
            _field("enable_large_batch_splitting", 9, _F.TYPE_MESSAGE, ".google.protobuf.BoolValue"),
            _field("max_execution_batch_size", 10, _F.TYPE_MESSAGE, _I64),
        ]
    },
    deps=["google/protobuf/wrappers.proto"],
)
_file(
    "tfcluster/serving/monitoring_config.proto",
    "tensorflow.serving",
    {
        "PrometheusConfig": [_field("enable", 1, _F.TYPE_BOOL), _field("path", 2, _F.TYPE_STRING)],
        "MonitoringConfig": [
            _field("prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")
        ],
    },
)
_file(
    "tfcluster/serving/ssl_config.proto",
    "tensorflow.serving",
    {
        "SSLConfig": [
            _field("server_key", 1, _F.TYPE_STRING),
            _field("server_cert", 2, _F.TYPE_STRING),
            _field("custom_ca", 3, _F.TYPE_STRING),
            _field("client_verify", 4, _F.TYPE_BOOL),
        ]
    },
)


def _cls(full_name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


BatchingParameters = _cls("tensorflow.serving.BatchingParameters")
MonitoringConfig = _cls("tensorflow.serving.MonitoringConfig")
SSLConfig = _cls("tensorflow.serving.SSLConfig")

try:  # the official module when grpcio-health-checking is installed
    from grpc_health.v1 import health_pb2 as _health_pb2

    HealthCheckRequest = _health_pb2.HealthCheckRequest
    HealthCheckResponse = _health_pb2.HealthCheckResponse
except ImportError:
    _file(
        "tfcluster/serving/health.proto",
        "grpc.health.v1",
        {
            "HealthCheckRequest": [_field("service", 1, _F.TYPE_STRING)],
            "HealthCheckResponse": [
                _field("status", 1, _F.TYPE_ENUM, ".grpc.health.v1.HealthCheckResponse.ServingStatus")
            ],
        },
        enums={
            "HealthCheckResponse": {
                "ServingStatus": [("UNKNOWN", 0), ("SERVING", 1), ("NOT_SERVING", 2), ("SERVICE_UNKNOWN", 3)]
            }
        },
    )
    HealthCheckRequest = _cls("grpc.health.v1.HealthCheckRequest")
    HealthCheckResponse = _cls("grpc.health.v1.HealthCheckResponse")

HEALTH_SERVICE = "grpc.health.v1.Health"


def parse_text(path: str, message_cls, what: str):
    """Parse a text-format proto file (a local path or a bucket URI); a one-line UserError naming the file
    and the problem."""
    from tfcluster.errors import UserError
    from tfcluster.storage import read_bytes, require_file

    require_file(path, what)
    text = read_bytes(path).decode("utf-8", errors="replace")
    try:
        return text_format.Parse(text, message_cls())
    except text_format.ParseError as e:
        raise UserError(f"{what} {path} is not a valid {message_cls.DESCRIPTOR.full_name} text proto: {e}") from None
