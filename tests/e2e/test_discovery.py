"""What integrators' tools ask first: health for every service name served, and server reflection
over grpc.reflection.v1 (grpcurl, Postman, newer grpcio) as well as v1alpha."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e

SERVED = ("riskgate.v1.Screening", "riskgate.v1.Watchlists", "riskgate.v1.Rules")


def test_health_answers_for_every_service_served(server: RunningServer) -> None:
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", *SERVED, "redis", "rules"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service="riskgate.v1.Nothing"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def _reflect(channel: grpc.Channel, version: str, requests: Iterator[reflection_pb2.ServerReflectionRequest]) -> Any:
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(requests, timeout=10))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_every_service(server: RunningServer, version: str) -> None:
    with server.channel() as channel:
        (listed,) = _reflect(channel, version, iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in listed.list_services_response.service}
        assert set(SERVED) | {"grpc.health.v1.Health"} <= names
        assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
        requests = iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=name) for name in SERVED])
        for name, reply in zip(SERVED, _reflect(channel, version, requests), strict=True):
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in reply.file_descriptor_response.file_descriptor_proto
            ]
            services = {f"{f.package}.{s.name}" for f in files for s in f.service}
            assert name in services


def test_reflection_serves_the_api_with_its_documentation(server: RunningServer) -> None:
    """`grpcurl describe riskgate.v1.Screening` shows the .proto comments."""
    with server.channel() as channel:
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="riskgate.v1.Screening")
        (reply,) = _reflect(channel, "v1", iter([request]))
    files = {
        f.name: f
        for f in (
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in reply.file_descriptor_response.file_descriptor_proto
        )
    }
    comments = " ".join(loc.leading_comments for loc in files["riskgate/v1/screening.proto"].source_code_info.location)
    assert "Screen one event" in comments and "ALREADY_EXISTS" in comments
