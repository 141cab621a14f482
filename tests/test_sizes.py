from core.generation.sizes import trained_sizes


def test_the_authors_49_sizes():
    sizes = trained_sizes()
    assert len(sizes) == 49
    for size in [(1024, 1024), (1152, 896), (1216, 832), (1344, 768), (1536, 640), (1792, 576), (2048, 512)]:
        assert size in sizes and size[::-1] in sizes
    assert all(w * h <= 1024 * 1024 and max(w, h) <= 4 * min(w, h) and w % 64 == h % 64 == 0 for w, h in sizes)
