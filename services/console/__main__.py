from services.console.app import create_app
from services.console.settings import ConsoleSettings
from shared.logging import configure
from shared.service import run


def main() -> None:
    settings = ConsoleSettings()
    configure("console", settings.log_level)
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
