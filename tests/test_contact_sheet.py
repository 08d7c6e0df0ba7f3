"""Contact sheets (pipeline/files/contact_sheet.py): where the images land, that the titles and notes
are drawn (dark pixels where the text goes, none where there is no text), that the legend's
swatches are the palette's colours, and that failed cells are grey."""
import numpy as np
import pytest

from barbershop_jax.models import bisenet
from barbershop_jax.pipeline.files import contact_sheet
from barbershop_jax.stages import target_mask

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(colour, h=40, w=40):
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def bbox(sheet, colour):
    """(top, bottom, left, right) of the pixels exactly `colour` (bottom/right exclusive)."""
    ys, xs = np.nonzero(np.all(sheet == np.array(colour, np.uint8), axis=-1))
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def dark(region):
    return int(np.count_nonzero(region.max(axis=-1) < 100))


def test_each_panel_is_fitted_into_a_size_box_in_one_row():
    sheet = contact_sheet.titled_row([("a", solid(RED)), ("b", solid(GREEN, 20, 40))], size=64)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    top, bottom, left, right = bbox(sheet, RED)
    assert (bottom - top, right - left) == (64, 64)
    g_top, g_bottom, g_left, g_right = bbox(sheet, GREEN)
    # The wide image keeps its aspect (64 x 32), centred in its box, to the right of the first.
    assert (g_bottom - g_top, g_right - g_left) == (32, 64)
    assert g_left > right and g_top - top == 16
    assert sheet.shape[1] == g_right + (left - 0)  # the same margin both sides


def test_titles_are_drawn_above_their_panels():
    sheet = contact_sheet.titled_row([("photo", solid(RED)), ("", solid(BLUE))], size=128)
    top, _, left, right = bbox(sheet, RED)
    b_top, _, b_left, b_right = bbox(sheet, BLUE)
    assert dark(sheet[:top, left:right]) > 20          # "photo" written above the first panel
    assert dark(sheet[:b_top, b_left:b_right]) == 0    # nothing above the untitled one


def test_sheet_title_and_notes():
    panels = [("x", solid(RED))]
    plain = contact_sheet.titled_row(panels, size=64)
    titled = contact_sheet.titled_row(panels, size=64, title="barbershop-jax demo",
                                      notes=["weights: embedded RANDOM weights - no real hairstyle"])
    assert titled.shape[0] > plain.shape[0] and titled.shape[1] == plain.shape[1]
    top, bottom, _, _ = bbox(titled, RED)
    plain_top = bbox(plain, RED)[0]
    assert top > plain_top                                  # the title line moved the panel down
    assert dark(titled[:top - (plain_top - 0)]) > 20        # and is drawn in the space it took
    assert dark(titled[bottom:]) > 20                       # the note under the panels
    assert dark(plain[bbox(plain, RED)[1]:]) == 0


def test_legend_swatches_are_the_palette_colours():
    labels = bisenet.label_map(16)
    target = np.zeros((32, 32), np.int32)
    target[:10] = labels.id("hair")
    target[10:20] = labels.id("skin")
    target[20:22, 4:8] = 4  # the 16-class palette gives ids 3 and 4 one colour
    target[20:22, 20:24] = 3
    entries = contact_sheet.legend_entries(target, labels)
    colours = target_mask.palette(16)
    assert dict(entries) == {"background": tuple(colours[0]), labels.names[1]: tuple(colours[1]),
                             f"{labels.names[3]}/{labels.names[4]}": tuple(colours[3]),
                             "hair": tuple(colours[labels.id("hair")])}
    sheet = contact_sheet.titled_row([("photo", solid(RED))], size=96, legend=entries)
    below = sheet[bbox(sheet, RED)[1]:]
    for _, colour in entries:
        if colour != (0, 0, 0):  # black is also the swatches' outline and the text
            assert np.count_nonzero(np.all(below == np.array(colour, np.uint8), axis=-1)) >= 25, colour


def test_legend_colours_match_colourise_beyond_16_classes():
    labels = bisenet.label_map(19)
    target = np.array([[0, 17], [18, 1]], np.int32)
    drawn = {tuple(c) for c in target_mask.colourise(target).reshape(-1, 3).tolist()}
    assert {c for _, c in contact_sheet.legend_entries(target, labels)} == drawn


def test_a_mask_panel_with_nearest_keeps_only_its_colours():
    mask = target_mask.colourise(np.kron(np.array([[0, 10], [1, 13]]), np.ones((3, 3), np.int64)))
    sheet = contact_sheet.titled_row([("target mask", mask, True)], size=64)
    top, bottom, left, right = bbox(sheet, target_mask.palette(16)[10])
    box = sheet[top:top + 64, right - 64:right]  # the whole mask panel: hair is its top right block
    assert {tuple(c) for c in box.reshape(-1, 3).tolist()} == {tuple(c) for c in mask.reshape(-1, 3).tolist()}


def test_grid_sheet_puts_inputs_in_the_margins_and_failed_cells_grey():
    faces = [("face 1", solid(RED)), ("face 2", solid(GREEN))]
    styles = [("style A", solid(BLUE)), ("style B", solid((255, 255, 0)))]
    cells = [[solid((0, 255, 255)), None], [None, solid((255, 0, 255))]]
    sheet = contact_sheet.grid_sheet(cells, faces, styles, size=48, title="transfer", corner="face \\ hairstyle")
    red, green, blue = bbox(sheet, RED), bbox(sheet, GREEN), bbox(sheet, BLUE)
    cyan, magenta = bbox(sheet, (0, 255, 255)), bbox(sheet, (255, 0, 255))
    assert red[2] == green[2] < blue[2] == cyan[2]          # faces in the left column
    assert blue[0] < red[0] == cyan[0] < green[0] == magenta[0]  # styles in the top row
    assert magenta[2] > cyan[2]
    grey = np.all(sheet == np.array(contact_sheet.FAILED_GREY, np.uint8), axis=-1)
    # The failed cells: row 1 col 2 and row 2 col 1, each a grey 48 x 48 box (less its text).
    assert grey[red[0]:red[1], magenta[2]:magenta[3]].mean() > 0.8
    assert grey[green[0]:green[1], cyan[2]:cyan[3]].mean() > 0.8
    assert not grey[red[0]:red[1], cyan[2]:cyan[3]].any()
    for label_box in (red, blue):  # labels on the heads
        assert dark(sheet[label_box[0] - 14:label_box[0], label_box[2]:label_box[3]]) > 5


def test_grid_sheet_rejects_a_ragged_grid():
    with pytest.raises(ValueError, match="2 row heads x 1 column heads"):
        contact_sheet.grid_sheet([[None], [None, None]], [("a", None), ("b", None)], [("x", None)])


def test_a_legend_title_is_written_before_the_swatches():
    entries = [("hair", (204, 102, 255))]
    plain = contact_sheet.titled_row([("x", solid(RED))], size=96, legend=entries)
    titled = contact_sheet.titled_row([("x", solid(RED))], size=96, legend=entries, legend_title="target mask:")
    assert bbox(titled, entries[0][1])[2] > bbox(plain, entries[0][1])[2] + 40  # the swatch moved right
    top = bbox(titled, RED)[1]
    assert dark(titled[top:, :bbox(titled, entries[0][1])[2]]) > 20  # the heading, left of it
