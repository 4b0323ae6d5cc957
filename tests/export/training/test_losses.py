"""Which mask token a first prompt trains."""


def test_round1_trains_a_box_on_the_single_mask_token_and_a_point_on_its_best_of_three():
    import torch

    from samrt.export.training import round1_selection

    loss = torch.tensor([[0.1, 0.9, 0.2, 0.5],   # point: best multimask token is 2 (token 0 is not a candidate)
                         [0.9, 0.1, 0.2, 0.3]])  # box: token 0 even though token 1 has the lower loss
    best, trained = round1_selection(loss, torch.tensor([False, True]))
    assert best.tolist() == [2, 0]
    assert trained.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
