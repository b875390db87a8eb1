from devtools.admin.cli import main

main()
