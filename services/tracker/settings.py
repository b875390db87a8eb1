from shared.settings import CommonSettings


class TrackerSettings(CommonSettings):
    http_port: int = 8003
    batch_max_records: int = 5000
