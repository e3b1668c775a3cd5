"""Server reflection that serves the API with its documentation, over grpc.reflection.v1 and v1alpha."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

log = logging.getLogger("riskgate.server")

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
DOCUMENTED_DESCRIPTORS = Path(__file__).parents[1] / "_gen" / "documented.pb"


def documented_files(path: Path = DOCUMENTED_DESCRIPTORS) -> dict[str, bytes]:
    """Our .proto files as FileDescriptorProtos with their comments (source info), by file name,
    from the descriptor set `make protos` writes; empty (reflection without comments) if absent."""
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    except (OSError, DecodeError):
        log.warning("no %s: server reflection serves the API without its documentation", path)
        return {}
    return {f.name: f.SerializeToString() for f in files}


class DocumentedReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """grpcio-reflection's servicer, serving our files with their comments: the generated modules'
    descriptors carry none, so `grpcurl describe` would show the API undocumented. (Overrides the
    two look-ups of grpcio-reflection 1.62's base servicer, pinned with grpcio.)"""

    def __init__(self, names: Sequence[str], documented: Mapping[str, bytes]) -> None:
        super().__init__(names)
        self._documented = documented

    def _with_comments(self, response: reflection_pb2.ServerReflectionResponse) -> Any:
        if response.HasField("file_descriptor_response"):
            files = response.file_descriptor_response.file_descriptor_proto
            for index, raw in enumerate(files):
                documented = self._documented.get(descriptor_pb2.FileDescriptorProto.FromString(raw).name)
                if documented is not None:
                    files[index] = documented
        return response

    def _file_by_filename(self, filename: str) -> Any:
        return self._with_comments(super()._file_by_filename(filename))

    def _file_containing_symbol(self, fully_qualified_name: str) -> Any:
        return self._with_comments(super()._file_containing_symbol(fully_qualified_name))


def enable_reflection(server: grpc.aio.Server, services: Sequence[str]) -> None:
    """Server reflection as grpc.reflection.v1alpha (what grpcio-reflection 1.62 ships) and as
    grpc.reflection.v1 (what grpcurl, Postman and newer clients ask first): the two protocols'
    messages are the same on the wire, field for field, only their package differs, so one
    servicer answers both."""
    names = (*services, reflection.SERVICE_NAME, REFLECTION_V1)
    servicer = DocumentedReflection(names, documented_files())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )
