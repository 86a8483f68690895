from mia.cli.attack import main

main()
