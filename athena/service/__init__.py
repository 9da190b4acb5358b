"""The service front ends: the HTTP API, the MCP server, the remote client, tokens and tenants.

Modules: ``wire`` (the error envelope both ends share), ``tokens`` (bearer tokens naming
tenants), ``gate`` (what a tenant may ask), ``schemas``/``http``/``asgi``/``metrics``/
``inflight``/``serve`` (the HTTP API under uvicorn), ``mcp`` (the MCP server over stdio and
Streamable HTTP) and ``client`` (:class:`~athena.service.client.RemoteMemoryAPI`).
"""
