"""Image intake: orientation, modes, bad files, captions, crops."""
import numpy as np
import pytest
import torch
from PIL import Image

from dreambooth.images import IMAGE_SUFFIXES
from dreambooth.images import open_image as load_image
from dreambooth.images import to_rgb
from dreambooth.training.data import Example, ExampleStream, crop_and_flip, load_examples
from dreambooth.errors import UserError


def _save_rotated(path, orientation: int):
    """A 40x20 (wide) image whose EXIF says 'rotate': the stored pixels are wide, the photo is tall."""
    im = Image.new("RGB", (40, 20), (200, 10, 10))
    im.paste((10, 10, 200), (0, 0, 20, 20))   # left half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes())


def test_exif_orientation_is_applied(tmp_path):
    _save_rotated(tmp_path / "a.jpg", 6)   # 6: rotate 90 degrees clockwise to display
    im = load_image(tmp_path / "a.jpg")
    assert im.size == (20, 40)
    top, bottom = np.asarray(im)[2, 10], np.asarray(im)[-3, 10]
    assert top[2] > 150 and bottom[0] > 150   # clockwise: the left half (blue) is now on top


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(mode):
    if mode == "I;16":
        im = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    else:
        im = Image.new(mode, (8, 8))
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "I;16":
        assert np.asarray(out).min() == 255   # full-scale 16-bit is white, not clipped noise


def test_transparency_is_composited_on_white():
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(im)).min() == 255


def test_bad_files_are_skipped_with_a_warning_naming_each(tmp_path):
    Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "good.jpg")
    Image.new("CMYK", (64, 64), (0, 50, 100, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((64, 64), 30000, dtype=np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    warnings = []
    examples = load_examples(tmp_path, "a sks dog", 32, warn=warnings.append)
    assert sorted(e.path.name for e in examples) == ["cmyk.jpg", "deep.png", "good.jpg"]
    text = "\n".join(warnings)
    for bad in ("corrupt.jpg", "empty.png", "notes.txt"):
        assert bad in text
    assert len(warnings) == 3


def test_files_passed_over_for_one_reason_are_one_warning(tmp_path):
    for i, side in enumerate((16, 20, 24, 28, 64)):
        Image.new("RGB", (side, side), (i, 2, 3)).save(tmp_path / f"p{i}.png")
        (tmp_path / f"p{i}.txt").write_text("a caption")
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "p0.mask.png").write_bytes(b"")
    warnings = []
    assert len(load_examples(tmp_path, "a sks dog", 32, warn=warnings.append)) == 5
    assert warnings == [
        f"ignoring {tmp_path / 'p0.mask.png'}: mask files are used only with --masked-loss",
        f"ignoring 5 caption files in {tmp_path} (p0.txt, p1.txt, p2.txt and 2 more): they are used only with --captions",
        f"skipping {tmp_path / 'notes.md'}: not an image ({', '.join(IMAGE_SUFFIXES)})",
        f"4 photos in {tmp_path} are below the training size 32 and are upscaled (p0.png 16x16, p1.png 20x20, "
        "p2.png 24x24 and 1 more); photos at least that large train sharper"]
    for name in ("p1.png", "p2.png", "p3.png", "p0.mask.png", "p0.txt", "p1.txt", "p2.txt", "p3.txt"):
        (tmp_path / name).unlink()
    (tmp_path / "more.md").write_text("y")
    warnings.clear()
    load_examples(tmp_path, "a sks dog", 32, warn=warnings.append)
    assert warnings == [
        f"ignoring {tmp_path / 'p4.txt'}: caption files are used only with --captions",
        f"skipping 2 files in {tmp_path} that are not images (more.md, notes.md; images are {', '.join(IMAGE_SUFFIXES)})",
        f"{tmp_path / 'p0.png'}: 16x16, upscaled to the training size 32; a photo at least that large trains sharper"]
    warnings.clear()                                   # class images are images, not photos
    load_examples(tmp_path, "a dog", 32, flag="--class-dir", warn=warnings.append)
    assert warnings[-1].endswith("16x16, upscaled to the training size 32; an image at least that large trains sharper")


def test_no_usable_image_is_a_one_line_error(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UserError, match="no usable image"):
        load_examples(tmp_path, "p", 32, warn=lambda m: None)
    with pytest.raises(UserError, match="no such folder"):
        load_examples(tmp_path / "missing", "p", 32)


def test_captions_only_when_asked(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a sks dog on the beach\n")
    assert load_examples(tmp_path, "default", 32, captions=True)[0].prompt == "a sks dog on the beach"
    warnings = []
    assert load_examples(tmp_path, "default", 32, warn=warnings.append)[0].prompt == "default"
    assert "a.txt" in warnings[0]
    (tmp_path / "a.txt").unlink()
    warnings = []
    assert load_examples(tmp_path, "default", 32, captions=True, warn=warnings.append)[0].prompt == "default"
    assert warnings == [f"--captions: no caption file (NAME.txt or NAME.caption beside NAME.jpg) in {tmp_path}; every "
                        "photo is trained with --instance-prompt"]


def test_captions_as_editors_save_them(tmp_path):
    """A byte-order mark (UTF-8 or UTF-16, as Notepad saves) is no part of the caption; NAME.TXT is
    NAME's caption too; an empty caption trains the photo with the instance prompt, and says so."""
    for name in ("a", "b", "c", "d"):
        Image.new("RGB", (32, 32)).save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_bytes("\ufeffa sks dog".encode("utf-8"))
    (tmp_path / "b.txt").write_bytes("a sks dog on grass".encode("utf-16"))
    (tmp_path / "c.TXT").write_text("a sks dog, upper case")
    (tmp_path / "d.txt").write_text("  \n")
    warnings = []
    prompts = {e.path.stem: e.prompt for e in load_examples(tmp_path, "default", 32, captions=True, warn=warnings.append)}
    assert prompts == {"a": "a sks dog", "b": "a sks dog on grass", "c": "a sks dog, upper case", "d": "default"}
    assert warnings == [f"{tmp_path / 'd.txt'}: an empty caption; its photo is trained with --instance-prompt"]
    (tmp_path / "a.txt").write_bytes(b"a sks \xff dog")
    load_examples(tmp_path, "default", 32, captions=True, warn=warnings.append)
    assert any("a.txt: not UTF-8 text" in w for w in warnings)


def test_a_very_long_photo_trains_its_middle(tmp_path):
    """A strip of 20000x4 would be 320,000 px long at a training size of 64: its middle 4:1 is kept."""
    strip = np.zeros((4, 20000, 3), dtype=np.uint8)
    strip[:, 9992:10008] = 255                            # a white middle
    Image.fromarray(strip).save(tmp_path / "strip.png")
    warnings = []
    (ex,) = load_examples(tmp_path, "p", 64, warn=warnings.append)
    assert ex.image.size == (256, 64) and np.asarray(ex.image)[:, 96:160].min() > 200
    assert any("longer than 4:1; its middle 4:1 is trained" in w for w in warnings)


def test_resize_short_side_and_keep_original_size(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "a.png")
    ex = load_examples(tmp_path, "p", 64)[0]
    assert ex.image.size == (96, 64) and ex.original_hw == (200, 300)


def test_crop_offsets_and_flip():
    arr = np.zeros((64, 96, 3), dtype=np.uint8)
    arr[:, :48] = 255                                    # left half white
    ex = Example(Image.fromarray(arr), "p", (64, 96), None)
    gen = torch.Generator().manual_seed(0)
    t, (top, left), _, _ = crop_and_flip(ex, 64, center=True, flip=False, gen=gen)
    assert (top, left) == (0, 16) and t.shape == (3, 64, 64)
    assert t[0, 0, 0] == 1.0 and t[0, 0, -1] == -1.0
    flips = [crop_and_flip(ex, 64, True, True, gen)[0][0, 0, 0].item() for _ in range(40)]
    assert -1.0 in flips and 1.0 in flips                # flipped sometimes, not always


def test_stream_resumes_exactly():
    exs = [Example(Image.new("RGB", (40, 32), (i * 20, 0, 0)), f"p{i}", (32, 40), None) for i in range(5)]
    a = ExampleStream(exs, exs[:3], 2, 32, False, True, seed=3)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(4)]
    b = ExampleStream(exs, exs[:3], 2, 32, False, True, seed=99)
    b.load_state_dict(state)
    for want in expected:
        got = b.next_batch()
        assert got.indices == want.indices and got.crop_top_left == want.crop_top_left
        assert torch.equal(got.pixels, want.pixels)


def test_pictures_in_unread_formats_are_said_with_what_to_do(tmp_path):
    """A phone's HEIC photo is not 'not an image': it is named with the advice to convert it; AVIF is
    read where this Pillow reads it."""
    from PIL import features
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "a.jpg")
    (tmp_path / "b.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    avif = features.check("avif")
    if avif:
        Image.new("RGB", (32, 32), (30, 200, 30)).save(tmp_path / "c.avif")
    warnings = []
    examples = load_examples(tmp_path, "p", 32, warn=warnings.append)
    assert [e.path.name for e in examples] == ["a.jpg"] + (["c.avif"] if avif else [])
    assert any("formats not read here (b.heic); convert them to PNG or JPEG" in w for w in warnings), warnings
    assert any("notes.pdf: not an image" in w for w in warnings) and not any("b.heic: not" in w for w in warnings)


def test_a_batch_larger_than_the_photos_is_said_once(tmp_path):
    one = [Example(Image.new("RGB", (32, 32)), "p", (32, 32), tmp_path / "a.png")]
    said = []
    ExampleStream(one, [], 4, 32, False, False, 0, warn=said.append)
    assert len(said) == 1 and said[0].startswith("--batch-size 4 is more than the 1 photo(s)")
    ExampleStream(one * 4, [], 4, 32, False, False, 0, warn=said.append)
    ExampleStream(one * 2, [], 2, 32, False, False, 0, shard=(1, 2), warn=said.append)   # the first process says it
    assert len(said) == 1


def test_far_more_photos_than_dreambooth_takes_are_said_once(tmp_path):
    for i in range(101):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i:03d}.png")
    warnings = []
    assert len(load_examples(tmp_path, "p", 8, warn=warnings.append)) == 101
    assert [w for w in warnings if "101 photos, where DreamBooth teaches a subject from 3 to 20" in w] == warnings
    assert len(warnings) == 1
