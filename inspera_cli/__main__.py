from inspera_cli.cli import main

main()
