from shared.settings import CommonSettings


class ConsoleSettings(CommonSettings):
    http_port: int = 8004
    # The public APIs the console is a client of (the same calls as any API user).
    scheduler_url: str = "http://127.0.0.1:8001"
    tracker_url: str = "http://127.0.0.1:8003"
    # A session unused this long ends; the person signs in again.
    session_idle_minutes: float = 30.0
    # Send the session cookie only over HTTPS (set when the console is served behind TLS).
    secure_cookies: bool = False
    # How often a live progress stream asks the tracker (an update reaches the page within 1 s).
    progress_poll_seconds: float = 0.3
    # A live progress stream lasts at most this long; the browser then reconnects by itself.
    stream_max_seconds: float = 20.0
    # Recipients shown per page on a peer-to-peer sending screen; voters per search page.
    page_size: int = 50
