from services.scheduler.app import create_app
from services.scheduler.settings import SchedulerSettings
from shared.logging import configure
from shared.service import run


def main() -> None:
    settings = SchedulerSettings()
    configure("scheduler", settings.log_level)
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
