import numpy as np
import pytest
from PIL import Image

from mmlm_course import preprocessing as pp


def test_to_float_image_range_dtype_and_batches():
    image = np.array([[[0, 128, 255]]], np.uint8)
    out = pp.to_float_image(image)
    assert out.dtype == np.float32 and out.shape == (1, 1, 3)
    np.testing.assert_allclose(out, [[[0.0, 128 / 255, 1.0]]])
    assert pp.to_float_image(np.zeros((2, 4, 4, 3), np.uint8)).shape == (2, 4, 4, 3)


@pytest.mark.parametrize("bad,message", [
    (np.zeros((4, 4, 4), np.uint8), "got 4 \\(RGBA"),
    (np.zeros((4, 4), np.uint8), "grayscale"),
    (np.zeros((4, 4, 1), np.uint8), "got 1 \\(grayscale"),
    (np.full((4, 4, 3), 255.0), "values in \\[0, 1\\]"),
    (np.zeros((4, 4, 3), np.int32), "expected dtype uint8"),
    (np.zeros((3, 4, 5), np.uint8), "channels must be last"),
])
def test_bad_images_are_rejected_with_a_clear_message(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        pp.to_float_image(bad)


def test_standardize_uses_channel_statistics():
    images = np.random.default_rng(0).integers(0, 256, (10, 5, 5, 3), dtype=np.uint8)
    floats = images / 255.0
    out = pp.standardize_image(images, floats.mean((0, 1, 2)), floats.std((0, 1, 2)))
    np.testing.assert_allclose(out.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std((0, 1, 2)), 1, atol=1e-4)


def test_hflip_swaps_left_and_right_only():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    flipped, caption = pp.hflip_with_caption(image, "a red circle is to the left of a square")
    assert np.array_equal(flipped, image[:, ::-1])
    assert caption == "a red circle is to the right of a square"
    assert pp.flip_caption("left right above") == "right left above"


def test_load_image_rgb_and_resize(tmp_path):
    Image.new("RGB", (10, 6), (10, 20, 30)).save(tmp_path / "rgb.png")
    assert pp.load_image(tmp_path / "rgb.png").shape == (6, 10, 3)
    assert pp.load_image(tmp_path / "rgb.png", size=4).shape == (4, 4, 3)


def _saved(tmp_path, name, image, **options):
    image.save(tmp_path / name, **options)
    return tmp_path / name


@pytest.mark.parametrize("name,make,pixel", [
    ("grey.png", lambda: Image.new("L", (4, 3), 100), (100, 100, 100)),
    ("palette.png", lambda: Image.new("RGB", (4, 3), (204, 0, 51)).convert("P"), (204, 0, 51)),   # a web-palette colour
    ("transparent.png", lambda: Image.new("RGBA", (4, 3), (0, 0, 0, 0)), (255, 255, 255)),   # laid over white
    ("half.png", lambda: Image.new("RGBA", (4, 3), (0, 0, 0, 128)), (127, 127, 127)),
    ("grey_alpha.png", lambda: Image.new("LA", (4, 3), (50, 255)), (50, 50, 50)),
    ("cmyk.jpg", lambda: Image.new("CMYK", (4, 3), (0, 0, 0, 0)), (255, 255, 255)),
    ("sixteen.png", lambda: Image.fromarray(np.full((3, 4), 32896, np.uint16)), (128, 128, 128)),
    ("sixteen_white.png", lambda: Image.fromarray(np.full((3, 4), 65535, np.uint16)), (255, 255, 255)),
    ("float.tif", lambda: Image.fromarray(np.full((3, 4), 0.5, np.float32)), (128, 128, 128)),
])
def test_load_image_converts_every_common_mode_to_rgb(tmp_path, name, make, pixel):
    array = pp.load_image(_saved(tmp_path, name, make()))
    assert array.dtype == np.uint8 and array.shape == (3, 4, 3)
    assert np.abs(array[1, 1].astype(int) - pixel).max() <= 2, array[1, 1]


def test_load_image_names_the_file_for_what_is_no_image(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:200])
    for name in ("empty.png", "text.jpg", "cut.jpg"):
        with pytest.raises(ValueError, match=f"{name} is not a readable image"):
            pp.load_image(tmp_path / name)
    with pytest.raises(ValueError, match="is a folder"):
        pp.load_image(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        pp.load_image(tmp_path / "missing.png")


def test_shapeworld_constants_are_the_statistics_of_shapeworld_images():
    from mmlm_course import shapeworld

    images = shapeworld.generate(200, "train", seed=1).images
    out = pp.standardize_image(images, pp.SHAPEWORLD_MEAN, pp.SHAPEWORLD_STD)
    np.testing.assert_allclose(out.mean((0, 1, 2)), 0, atol=0.05)
    np.testing.assert_allclose(out.std((0, 1, 2)), 1, atol=0.05)
    assert len(pp.IMAGENET_MEAN) == len(pp.IMAGENET_STD) == 3


def test_tokenizer_specials_unknown_and_round_trip():
    tok = pp.Tokenizer.for_shapeworld()
    assert tok.id_to_token[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    ids = tok.encode("What color is the ZEBRA?", add_bos=True, add_eos=True, unknown="unk")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids[5] == tok.unk_id
    assert tok.decode(tok.encode("what color is the circle?")) == "what color is the circle?"
    assert tok.decode([tok.token_to_id["red"], tok.eos_id, tok.token_to_id["circle"]]) == "red"


def test_tokenizer_rejects_empty_text_and_bad_ids():
    tok = pp.Tokenizer.for_shapeworld()
    with pytest.raises(ValueError, match="empty text"):
        tok.encode("   ")
    with pytest.raises(TypeError, match="must be a str"):
        tok.encode(None)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([999])


def test_fixed_vocabulary_refuses_unknown_words_by_name():
    tok = pp.Tokenizer.for_shapeworld(extra_special=("<caption>",))
    with pytest.raises(ValueError, match="not in the vocabulary.*'zebra'"):
        tok.encode("a red zebra")
    with pytest.raises(ValueError, match=r"2 of the 6 words.*'dog' \(2\)"):
        tok.encode_batch(["a dog", "the red dog ?"])
    with pytest.warns(UserWarning, match="'dog'"):
        assert tok.encode("a dog", unknown="warn") == [tok.token_to_id["a"], tok.unk_id]
    with pytest.raises(ValueError, match="unknown must be one of"):
        tok.encode("a circle", unknown="skip")
    assert tok.unknown_words(["a dog", "a cat and a dog"]) == {"dog": 2, "cat": 1}
    assert tok.encode("<caption> a circle")[0] == tok.token_to_id["<caption>"]  # special tokens are known


def test_tokenizer_from_texts_is_deterministic_and_saves(tmp_path):
    tok = pp.Tokenizer.from_texts(["b a", "a c", "a"], extra_special=["<image>"])
    assert tok.id_to_token == ["<pad>", "<unk>", "<bos>", "<eos>", "<image>", "a", "b", "c"]
    tok.save(tmp_path / "vocab.json")
    loaded = pp.Tokenizer.load(tmp_path / "vocab.json")
    assert loaded.id_to_token == tok.id_to_token and loaded.special_ids == tok.special_ids
    assert loaded.unknown == tok.unknown == "unk"


def test_from_texts_min_count_maps_rare_words_to_unk_and_checks_its_input():
    tok = pp.Tokenizer.from_texts(["a dog runs", "a dog sits", "a cat"], min_count=2)
    assert tok.id_to_token[4:] == ["a", "dog"]
    assert tok.encode("a cat runs") == [tok.token_to_id["a"], tok.unk_id, tok.unk_id]
    strict = pp.Tokenizer.from_texts(["a dog"], unknown="error")
    with pytest.raises(ValueError, match="'cat'"):
        strict.encode("a cat")
    with pytest.raises(TypeError, match="one str"):
        pp.Tokenizer.from_texts("a dog")
    with pytest.raises(ValueError, match="texts is empty"):
        pp.Tokenizer.from_texts([])
    with pytest.raises(ValueError, match="min_count"):
        pp.Tokenizer.from_texts(["a"], min_count=0)


def test_saved_strict_tokenizer_stays_strict(tmp_path):
    pp.Tokenizer.for_shapeworld().save(tmp_path / "vocab.json")
    loaded = pp.Tokenizer.load(tmp_path / "vocab.json")
    assert loaded.unknown == "error"
    with pytest.raises(ValueError, match="'zebra'"):
        loaded.encode("a zebra")


def test_encode_batch_pads_truncates_and_matches_encode():
    tok = pp.Tokenizer.for_shapeworld()
    texts = ["a red circle", "is there a blue square ?"]
    ids = tok.encode_batch(texts, add_bos=True, add_eos=True)
    assert ids.dtype == np.int32 and ids.shape == (2, 8)
    assert ids[0].tolist() == tok.encode(texts[0], add_bos=True, add_eos=True) + [tok.pad_id] * 3
    assert ids[1].tolist() == tok.encode(texts[1], add_bos=True, add_eos=True)
    assert (ids != tok.pad_id).sum(axis=1).tolist() == [5, 8]  # the mask of real tokens
    short = tok.encode_batch(texts, max_length=4)
    assert short.shape == (2, 4) and short[1].tolist() == tok.encode(texts[1])[:4]
    assert tok.encode_batch(texts, max_length=10).shape == (2, 10)
    with pytest.raises(TypeError, match="one str"):
        tok.encode_batch("a red circle")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        tok.encode_batch(["a circle", 3])
    with pytest.raises(TypeError, match="max_length must be an int"):
        tok.encode_batch(texts, max_length=4.0)
    with pytest.raises(ValueError, match="no sequences"):
        tok.encode_batch([])


def test_pad_sequences_and_mask():
    ids, mask = pp.pad_sequences([[5, 6, 7], [8]])
    assert ids.dtype == np.int32 and mask.dtype == bool
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    ids, mask = pp.pad_sequences([[5, 6, 7]], max_length=2)
    assert ids.tolist() == [[5, 6]] and mask.all()
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pp.pad_sequences([[1], []])
    with pytest.raises(ValueError, match="no sequences"):
        pp.pad_sequences([])


def test_tf_data_pipeline_batches_and_checks_batch_sizes():
    images = np.zeros((10, 8, 8, 3), np.uint8)
    ids = np.ones((10, 5), np.int32)
    batches = list(pp.make_image_text_dataset(images, ids, batch_size=4, shuffle=True))
    assert [int(b[0].shape[0]) for b in batches] == [4, 4, 2]
    assert batches[0][0].dtype.name == "float32"
    with pytest.raises(ValueError, match="same batch size"):
        pp.make_image_text_dataset(images, ids[:9])


def test_tf_data_pipeline_scales_uint8_once_and_keeps_float_images():
    ids = np.ones((2, 5), np.int32)
    as_uint8 = np.full((2, 4, 4, 3), 255, np.uint8)
    as_float = np.full((2, 4, 4, 3), 0.5, np.float32)
    (uint8_batch, _), = pp.make_image_text_dataset(as_uint8, ids, batch_size=2, shuffle=False)
    (float_batch, _), = pp.make_image_text_dataset(as_float, ids, batch_size=2, shuffle=False)
    assert np.allclose(uint8_batch, 1.0) and np.allclose(float_batch, 0.5)     # never divided by 255 twice


# --------------------------------------------------------------------------- sub-words (BPE)

SENNRICH_CORPUS = ["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3


def test_learn_bpe_finds_the_merges_of_sennrich_et_al():
    merges = pp.learn_bpe(SENNRICH_CORPUS, 10)
    assert merges == [("e", "s"), ("es", "t"), ("est", "</w>"), ("l", "o"), ("lo", "w"), ("n", "e"),
                      ("ne", "w"), ("new", "est</w>"), ("low", "</w>"), ("w", "i")]
    assert pp.learn_bpe(SENNRICH_CORPUS, 3) == merges[:3]  # fewer merges: a prefix of the same list
    assert pp.learn_bpe(SENNRICH_CORPUS, 0) == []


def test_learn_bpe_breaks_ties_by_the_first_pair_seen():
    # ("a", "b") and ("c", "d") both occur twice: the pair seen first wins, whatever the alphabet says
    assert pp.learn_bpe(["cd", "ab", "cd", "ab"], 1) == [("c", "d")]
    assert pp.learn_bpe(["ab", "cd", "ab", "cd"], 1) == [("a", "b")]
    assert pp.learn_bpe(["ab", "cd", "cd", "ab", "x"], 1) == [("a", "b")]
    # a more frequent pair beats an earlier one
    assert pp.learn_bpe(["ab", "cd", "cd"], 1) == [("c", "d")]


def test_learn_bpe_stops_when_every_word_is_one_symbol():
    merges = pp.learn_bpe(["ab", "ab", "a"], 100)
    assert merges == [("a", "b"), ("ab", "</w>"), ("a", "</w>")]
    assert pp.bpe_segment("ab", merges) == ["ab</w>"] and pp.bpe_segment("a", merges) == ["a</w>"]


def test_bpe_segment_splits_unseen_words_into_known_pieces():
    merges = pp.learn_bpe(SENNRICH_CORPUS, 10)
    assert pp.bpe_segment("lowest", merges) == ["low", "est</w>"]
    assert pp.bpe_segment("newest", merges) == ["newest</w>"]
    assert pp.bpe_segment("newer", merges) == ["new", "e", "r", "</w>"]
    assert pp.bpe_segment("lower", []) == ["l", "o", "w", "e", "r", pp.END_OF_WORD]
    assert pp.bpe_segment("zzz", merges) == ["z", "z", "z", "</w>"]  # characters never seen stay alone
    # the segments spell the word again, and every piece is a character or a learned symbol
    vocabulary = set("lowernstid") | {pp.END_OF_WORD} | {a + b for a, b in merges}
    for word in ("widest", "lowest", "slower", "wider"):
        pieces = pp.bpe_segment(word, merges)
        assert "".join(pieces) == word + pp.END_OF_WORD and set(pieces) <= vocabulary


def test_bpe_on_shapeworld_keeps_frequent_words_whole():
    from mmlm_course import shapeworld

    data = shapeworld.generate(100, "train", seed=0)
    words = [w for text in data.captions for w in pp.split_words(text)]
    merges = pp.learn_bpe(words, 1000)
    assert all(pp.bpe_segment(w, merges) == [w + pp.END_OF_WORD] for w in set(words))
    assert len(pp.bpe_segment("squares", merges)) > 1


@pytest.mark.parametrize("words,num_merges,error,message", [
    ("low lower", 5, TypeError, "expected a list of words.*split_words"),
    (5, 5, TypeError, "expected a list of words"),
    ([], 5, ValueError, "at least one word"),
    (["low", 3], 5, TypeError, r"words\[1\]: expected a str"),
    (["low", ""], 5, ValueError, r"words\[1\].*non-empty word"),
    (["low", "new est"], 5, ValueError, r"words\[1\].*without spaces.*split_words"),
    (["low"], 2.0, TypeError, "num_merges must be an int"),
    (["low"], -1, ValueError, "num_merges must be >= 0"),
])
def test_learn_bpe_rejects_bad_input_with_a_clear_message(words, num_merges, error, message):
    with pytest.raises(error, match=message):
        pp.learn_bpe(words, num_merges)


def test_bpe_segment_rejects_bad_input_with_a_clear_message():
    merges = pp.learn_bpe(SENNRICH_CORPUS, 3)
    with pytest.raises(TypeError, match="word: expected a str"):
        pp.bpe_segment(["low"], merges)
    with pytest.raises(ValueError, match="without spaces"):
        pp.bpe_segment("low est", merges)
    with pytest.raises(TypeError, match=r"merges\[1\]: expected a pair of str"):
        pp.bpe_segment("lowest", [("e", "s"), "est"])


# Issue #16: bad input to the public functions raises a clear TypeError / ValueError.
_IMG = np.zeros((8, 8, 3), np.uint8)


@pytest.mark.parametrize("call,error,word", [
    (lambda: pp.validate_image(np.zeros((0, 8, 3), np.uint8)), ValueError, "1 pixel"),
    (lambda: pp.standardize_image(_IMG, mean=(123.7, 116.3, 103.5)), ValueError, "255"),
    (lambda: pp.resize_image(_IMG, 0), ValueError, "size"),
    (lambda: pp.resize_image(_IMG, 10**9), ValueError, "size"),
    (lambda: pp.resize_image(_IMG, "16"), TypeError, "size"),
    (lambda: pp.Tokenizer([]), ValueError, "empty"),
    (lambda: pp.Tokenizer([5, 6]), TypeError, "words"),
    (lambda: pp.Tokenizer(["a", ""]), ValueError, "non-empty"),
    (lambda: pp.Tokenizer(["a"], extra_special=[5]), TypeError, "extra_special"),
    (lambda: pp.Tokenizer.from_texts(["a red circle"], min_count=10**9), ValueError, "min_count"),
    (lambda: pp.Tokenizer.for_shapeworld().encode_batch(["a red circle"], max_length=10**9), ValueError, "GiB"),
    (lambda: pp.pad_sequences([[1, 2]], pad_id=None), TypeError, "pad_id"),
    (lambda: pp.pad_sequences([[1, 2]], pad_id="0"), TypeError, "pad_id"),
])
def test_bad_inputs_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()


# Issue #16, part 2: media files and paths a reviewer's fuzzer tried.
@pytest.mark.parametrize("name,make,pixel", [
    ("dark16.png", lambda: Image.fromarray(np.full((3, 4), 1000, np.uint16)), (4, 4, 4)),   # 16-bit stays dark
    ("int32.tif", lambda: Image.fromarray(np.full((3, 4), 32896, np.int32)), (128, 128, 128)),
    ("float255.tif", lambda: Image.fromarray(np.full((3, 4), 200.0, np.float32)), (200, 200, 200)),
    ("bits.png", lambda: Image.new("1", (4, 3), 1), (255, 255, 255)),
    ("palette_alpha.png", lambda: Image.new("P", (4, 3), 0), (255, 255, 255)),        # index 0 is transparent
])
def test_load_image_scales_deep_and_odd_modes(tmp_path, name, make, pixel):
    options = {"transparency": 0} if name.startswith("palette") else {}
    array = pp.load_image(_saved(tmp_path, name, make(), **options))
    assert array.dtype == np.uint8 and array.shape == (3, 4, 3)
    assert np.abs(array[1, 1].astype(int) - pixel).max() <= 1, array[1, 1]


def test_load_image_applies_exif_rotation_and_reads_the_first_gif_frame(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6                                                  # "rotate 90 degrees to display"
    Image.new("RGB", (16, 8), (200, 10, 10)).save(tmp_path / "phone.jpg", exif=exif)
    assert pp.load_image(tmp_path / "phone.jpg").shape == (16, 8, 3)   # as a photo viewer shows it
    frames = [Image.new("RGB", (4, 4), (v, v, v)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert abs(int(pp.load_image(tmp_path / "anim.gif")[0, 0, 0]) - 10) <= 3


def test_load_image_refuses_bombs_and_bad_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)               # so a 20 x 20 image counts as a bomb
    Image.new("L", (20, 20)).save(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="bomb.png is not a readable image.*DecompressionBombError"):
        pp.load_image(tmp_path / "bomb.png")
    for path in (None, 5, b"x.png"):
        with pytest.raises(TypeError, match="path must be a file path"):
            pp.load_image(path)
    with pytest.raises(ValueError, match="cannot open"):
        pp.load_image("x" * 5000)                                     # longer than the system allows


def test_tokenizer_save_and_load_name_bad_files(tmp_path):
    tok = pp.Tokenizer.for_shapeworld()
    with pytest.raises(ValueError, match="does its folder exist"):
        tok.save(tmp_path / "no" / "such" / "vocab.json")
    (tmp_path / "junk.json").write_bytes(b"\xff\xfe junk")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name in ("junk.json", "list.json"):
        with pytest.raises(ValueError, match=f"{name}: not a"):
            pp.Tokenizer.load(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="No vocabulary file"):
        pp.Tokenizer.load(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="path must be a file path"):
        tok.save(None)


@pytest.mark.parametrize("change,error,word", [
    (dict(token_ids=np.full((2, 3), 0.5)), TypeError, "token_ids: expected an int array"),
    (dict(token_ids=[[1, 2], [3]]), TypeError, "token_ids: expected an int array"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=None), TypeError, "batch_size"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(shuffle="no"), TypeError, "shuffle must be True or False"),
])
def test_tf_data_pipeline_checks_its_arguments(change, error, word):
    args = dict(images=np.zeros((2, 4, 4, 3), np.uint8), token_ids=np.zeros((2, 3), np.int32), batch_size=2)
    with pytest.raises(error, match=word):
        pp.make_image_text_dataset(**{**args, **change})
