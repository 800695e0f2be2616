from .scoring import main

main()
