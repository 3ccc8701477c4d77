from dermsynth.cli import main

main()
