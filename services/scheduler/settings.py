from shared.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    http_port: int = 8001
    fanout_page_size: int = 5000
    # How often to look for send-outs whose fan-out no process is driving (e.g. after a crash).
    fanout_rescan_seconds: float = 5.0
    # Phone numbers without a country code are read as numbers of this region.
    default_phone_region: str = "DK"
