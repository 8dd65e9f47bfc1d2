from wdist.cli.main import main

main()
