"""The MCP server behind the shared tool-execution recordings, for tests.

Five tools, with the names, parameter schemas and descriptions that the
recordings in ../shared/recordings carry in `request.body.tools`, and the
behaviour their README gives. `MCPServer` (the `mcp` package) serves them over
streamable HTTP at `/mcp`, on a loopback port, in a thread:

    with RecordedToolServer() as server:
        async with mcp.Client(server.url) as client:
            await client.call_tool("get_user_id", {"username": "alice"})  # user_12345

From a shell (prints the URL once it is ready):

    python tests/mcp_server.py --port 0
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from types import TracebackType

import uvicorn
from mcp.server.mcpserver import MCPServer

USER_IDS = {"alice": "user_12345", "bob": "user_67890", "charlie": "user_11111", "admin": "user_00000"}
PERMISSIONS = {"user_12345": "read,write", "user_67890": "read", "user_11111": "admin", "user_00000": "superadmin"}
EXPERIMENT_IDS = {
    "temperature_test": "exp_001",
    "pressure_test": "exp_002",
    "chemical_reaction": "exp_003",
    "boiling_point": "exp_004",
}
EXPERIMENT_RESULTS = {
    "exp_001": "Temperature: 25°C, Status: Success",
    "exp_002": "Pressure: 1.2 atm, Status: Success",
    "exp_003": "Yield: 85%, Status: Complete",
    "exp_004": "Boiling Point: 100°C, Status: Verified",
    "exp_999": "No results found",
}


def lookup_user_id(username: str) -> str:
    return USER_IDS.get(username, "user_99999")


def lookup_user_permissions(user_id: str) -> str:
    return PERMISSIONS.get(user_id, "none")


def lookup_file_access(user_id: str, filename: str) -> str:
    # Each permission grants what it grants; "read,write" has both.
    permissions = set(lookup_user_permissions(user_id).split(","))
    allowed = (
        "superadmin" in permissions
        or ("admin" in permissions and not filename.startswith("secret_"))
        or ("write" in permissions and filename.endswith(".txt"))
        or ("read" in permissions and filename.endswith((".txt", ".md")))
    )
    return "yes" if allowed else "no"


def lookup_experiment_id(experiment_name: str) -> str:
    return EXPERIMENT_IDS.get(experiment_name.lower(), "exp_999")


def lookup_experiment_results(experiment_id: str) -> str:
    return EXPERIMENT_RESULTS.get(experiment_id, "Invalid experiment ID")


def build_server() -> MCPServer:
    """The five tools; their docstrings are the recordings' descriptions, indentation included."""
    server = MCPServer("parley-recorded-tools")

    @server.tool()
    def get_user_id(username: str) -> str:
        """
        Get the user ID for a given username. This ID is needed for other operations.

        :param username: The username to look up
        :return: The user ID for the username
        """
        return lookup_user_id(username)

    @server.tool()
    def get_user_permissions(user_id: str) -> str:
        """
        Get the permissions for a user ID. Requires a valid user ID from get_user_id.

        :param user_id: The user ID to check permissions for
        :return: The permissions for the user
        """
        return lookup_user_permissions(user_id)

    @server.tool()
    def check_file_access(user_id: str, filename: str) -> str:
        """
        Check if a user can access a specific file. Requires a valid user ID.

        :param user_id: The user ID to check access for
        :param filename: The filename to check access to
        :return: Whether the user can access the file (yes/no)
        """
        return lookup_file_access(user_id, filename)

    @server.tool()
    def get_experiment_id(experiment_name: str) -> str:
        """
        Get the experiment ID for a given experiment name. This ID is needed to get results.

        :param experiment_name: The name of the experiment
        :return: The experiment ID
        """
        return lookup_experiment_id(experiment_name)

    @server.tool()
    def get_experiment_results(experiment_id: str) -> str:
        """
        Get the results for an experiment ID. Requires a valid experiment ID from get_experiment_id.

        :param experiment_id: The experiment ID to get results for
        :return: The experiment results
        """
        return lookup_experiment_results(experiment_id)

    return server


class RecordedToolServer:
    """`build_server()` over streamable HTTP, served by uvicorn in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Serves, waits until ready, and returns the URL of the MCP endpoint (`http://HOST:PORT/mcp`)."""
        if self._server is not None:
            return self.url
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        app = build_server().streamable_http_app(host=self.host)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mcp-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.02)
        self._server, self._thread = server, thread
        self.url = f"http://{self.host}:{self.port}/mcp"
        return self.url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> RecordedToolServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the recordings' five MCP tools over streamable HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    args = parser.parse_args(argv)
    server = RecordedToolServer(args.host, args.port)
    print(server.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
