"""Correction clicks from the error region."""


def test_error_points_come_from_the_error_region_with_the_right_label():
    import torch

    from samrt.export.training import error_points

    target = torch.zeros(3, 8, 8, dtype=torch.bool)
    target[:, 2:6, 2:6] = True
    pred = target.clone()
    pred[0, 2:6, 2:4] = False  # missed foreground only: a positive click inside it
    pred[1, 0, :] = True  # false background only: a negative click on row 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        coords, labels = error_points(pred, target, gen)
        assert coords.shape == (3, 1, 2) and labels.shape == (3, 1)
        x, y = coords[0, 0].long().tolist()
        assert labels[0, 0] == 1 and 2 <= x < 4 and 2 <= y < 6
        x, y = coords[1, 0].long().tolist()
        assert labels[1, 0] == 0 and y == 0
        assert labels[2, 0] == -1  # no error: a padding point, no new information
