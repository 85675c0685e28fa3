"""Wire shapes of the APIs localllm speaks, written once for its server and its client.

One module per wire API. Each holds what the server's routes and the remote client would
otherwise both spell out: the request fields and their localllm names, how a message,
a tool call and a log probability look on that wire. The server parses and answers with
them; ``connect()`` builds bodies with them, so the two sides cannot drift apart.
"""
