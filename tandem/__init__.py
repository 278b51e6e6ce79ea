"""Tandem's core: what the gateway and the edge agent both use.

Request and answer types (`chat`), errors as named values (`errors`), the wire formats
(`wire/`), the route decision (`routing/`), config loading (`configfile`), logs and metrics,
the HTTP faces' I/O (`http_io`) and the outbound HTTP transport (`transport`). The generated
gRPC code is `tandem.v1`. Nothing here imports an application package, the simulators or
litellm (tests/foundation/test_layout.py holds that line).
"""
