def test_learn(learned_run):
    print(learned_run)
