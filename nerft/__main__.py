from nerft.cli import main

main()
