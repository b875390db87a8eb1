from services.dispatcher.app import create_app
from services.dispatcher.settings import DispatcherSettings
from shared.logging import configure
from shared.service import run


def main() -> None:
    settings = DispatcherSettings()
    configure("dispatcher", settings.log_level)
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
