from intentlm.cli import main

main()
