"""The msb server: JSON-RPC 2.0 at ``/api/v1/rpc``, MCP at ``/mcp``, health at
``/api/v1/health`` — sandboxes as tools for AI agents (contracts in shared CONTRACTS.md)."""
