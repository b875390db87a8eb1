from services.tracker.app import create_app
from services.tracker.settings import TrackerSettings
from shared.logging import configure
from shared.service import run


def main() -> None:
    settings = TrackerSettings()
    configure("tracker", settings.log_level)
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
