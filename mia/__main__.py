from mia.run_attack import main

main()
