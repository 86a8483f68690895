from train_targets.train import main

main()
