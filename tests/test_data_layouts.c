/* Dataset layouts: captions beside the images (nested folders, PNG/JPEG/WebP mixed, the caption_extension
 * rule), Images/ + ImageCaptions/, kohya's N_name/ folders with regularisation images balanced as kohya does,
 * DreamBooth instance and class folders, detection, and options that do not fit the layout. */
#include <stdlib.h>

#include "data/data.h"
#include "data_util.h"

static void check_item(lsd_dataset *ds, const char *suffix, const char *caption, int w, int h, int repeats,
                       int is_class)
{
    long i = item_index(ds, suffix);
    if (i < 0)
        return;
    const lsdi_item *it = &ds->items[i];
    CHECK(!strcmp(it->captions[0], caption), "%s: caption \"%s\", want \"%s\"", suffix, it->captions[0], caption);
    CHECK(it->width == w && it->height == h, "%s: %dx%d, want %dx%d", suffix, it->width, it->height, w, h);
    CHECK(it->repeats == repeats && it->is_class == is_class, "%s: repeats %d is_class %d, want %d %d", suffix,
          it->repeats, it->is_class, repeats, is_class);
}

TEST(data_layout_folder_nested_mixed_formats)
{
    const char *d = temp_dir();
    put_image(d, "a.png", 20, 10, IMG_PNG, 0);
    put_text(d, "a.txt", "a png", -1);
    put_image(d, "sub/b.jpg", 16, 24, IMG_JPEG, 1);
    put_text(d, "sub/b.caption", "a jpeg", -1);
    put_image(d, "sub/deeper/c.WEBP", 12, 8, IMG_WEBP, 2);
    put_text(d, "sub/deeper/c.caption", "c from .caption", -1);
    put_text(d, "sub/deeper/c.txt", "c from .txt", -1);
    put_image(d, ".hidden/x.png", 8, 8, IMG_PNG, 0); /* hidden folders are skipped */
    put_text(d, "notes.md", "not an image", -1);
    lsd_dataset *ds = open_ok(d, NULL);
    if (!ds)
        return;
    CHECK(lsd_dataset_size(ds) == 3 && ds->layout == LSD_LAYOUT_FOLDER);
    CHECK(strstr(ds->items[0].path, "/a.png") && strstr(ds->items[1].path, "/sub/b.jpg") &&
          strstr(ds->items[2].path, "/sub/deeper/c.WEBP"), "path order");
    check_item(ds, "a.png", "a png", 20, 10, 1, 0);
    check_item(ds, "b.jpg", "a jpeg", 16, 24, 1, 0);
    check_item(ds, "c.WEBP", "c from .caption", 12, 8, 1, 0); /* NULL caption_extension: .caption first */
    lsd_dataset_info info = {.struct_size = sizeof info};
    CHECK_OK(lsd_dataset_get_info(ds, &info));
    CHECK(info.layout == LSD_LAYOUT_FOLDER && info.images == 3 && info.draws == 3 && info.class_images == 0 &&
          info.folders == 1);
    lsd_dataset_free(ds);

    /* A caption_extension given is the only one read: b.jpg has no .txt. */
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.caption_extension = ".txt";
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_FORMAT, "sub/b.jpg: no caption (expected");
    CHECK(strstr(lsd_last_error(), "sub/b.txt"), "names the caption file looked for: %s", lsd_last_error());
    put_text(d, "sub/b.txt", "b from .txt", -1);
    ds = open_ok(d, &p);
    check_item(ds, "c.WEBP", "c from .txt", 12, 8, 1, 0);
    check_item(ds, "b.jpg", "b from .txt", 16, 24, 1, 0);
    lsd_dataset_free(ds);
}

TEST(data_layout_seed)
{
    const char *d = temp_dir();
    const char *root = put_dir(d, "Dataset");
    char images[600], captions[600], other[600];
    snprintf(images, sizeof images, "%s/Images", root);
    snprintf(captions, sizeof captions, "%s/ImageCaptions", root);
    put_image(root, "Images/cat.png", 10, 10, IMG_PNG, 0);
    put_image(root, "Images/more/dog.jpg", 12, 9, IMG_JPEG, 1);
    put_text(root, "ImageCaptions/cat.txt", "a cat", -1);
    put_text(root, "ImageCaptions/more/dog.txt", "a dog\nignored second line", -1);
    put_text(root, "Images/cat.txt", "beside the image: not read in this layout", -1);
    /* The parent of Images/, and Images/ itself with its sibling ImageCaptions/. */
    const char *dirs[2] = {root, images};
    for (int k = 0; k < 2; k++) {
        lsd_dataset *ds = open_ok(dirs[k], NULL);
        if (!ds)
            continue;
        CHECK(ds->layout == LSD_LAYOUT_SEED && lsd_dataset_size(ds) == 2, "%s", dirs[k]);
        check_item(ds, "Images/cat.png", "a cat", 10, 10, 1, 0);
        check_item(ds, "Images/more/dog.jpg", "a dog", 12, 9, 1, 0);
        lsd_dataset_folder f = {.struct_size = sizeof f};
        CHECK_OK(lsd_dataset_folder_info(ds, 0, &f));
        CHECK(f.images == 2 && !strcmp(f.path, images), "folder %s", f.path);
        lsd_dataset_free(ds);
    }
    /* Images/ with caption_data_dir elsewhere. */
    snprintf(other, sizeof other, "%s", put_dir(d, "elsewhere"));
    put_text(other, "cat.txt", "another cat", -1);
    put_text(other, "more/dog.txt", "another dog", -1);
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.caption_data_dir = other;
    lsd_dataset *ds = open_ok(images, &p);
    check_item(ds, "cat.png", "another cat", 10, 10, 1, 0);
    check_item(ds, "dog.jpg", "another dog", 12, 9, 1, 0);
    lsd_dataset_free(ds);
    /* A missing caption names the image and the caption file expected; a missing captions folder names it. */
    remove(put_text(root, "ImageCaptions/more/dog.txt", "", 0));
    CHECK_STATUS(lsd_dataset_open(root, NULL, &ds), LSD_ERR_FORMAT, "Images/more/dog.jpg: no caption");
    CHECK(strstr(lsd_last_error(), "ImageCaptions/more/dog.caption or ") &&
          strstr(lsd_last_error(), "ImageCaptions/more/dog.txt"), "%s", lsd_last_error());
    p.caption_data_dir = "/nonexistent/caps";
    CHECK_STATUS(lsd_dataset_open(images, &p, &ds), LSD_ERR_NOT_FOUND, "/nonexistent/caps");
}

TEST(data_layout_kohya_repeats_and_folder_captions)
{
    const char *d = temp_dir();
    const char *train = put_dir(d, "train");
    put_image(train, "10_sks dog/a.png", 8, 8, IMG_PNG, 0);
    put_text(train, "10_sks dog/a.caption", "a custom caption", -1);
    put_text(train, "10_sks dog/a.txt", "not read: .caption comes first", -1);
    put_image(train, "10_sks dog/b.webp", 8, 16, IMG_WEBP, 1);   /* no caption: the folder's name */
    put_image(train, "10_sks dog/nested/n.jpg", 16, 8, IMG_JPEG, 2);
    put_image(train, "3_cat/c.png", 8, 8, IMG_PNG, 3);
    put_text(train, "3_cat/c.txt", "c caption", -1);
    put_image(train, "notes/x.png", 8, 8, IMG_PNG, 0);  /* no N_ prefix: ignored, as kohya does */
    put_image(train, "0_zero/z.png", 8, 8, IMG_PNG, 0); /* 0 repeats: ignored */
    put_image(train, "loose.png", 8, 8, IMG_PNG, 0);    /* not in an N_name folder: ignored */
    lsd_dataset *ds = open_ok(train, NULL);
    if (!ds)
        return;
    CHECK(ds->layout == LSD_LAYOUT_KOHYA && lsd_dataset_size(ds) == 4, "%zu items", lsd_dataset_size(ds));
    check_item(ds, "10_sks dog/a.png", "a custom caption", 8, 8, 10, 0);
    check_item(ds, "10_sks dog/b.webp", "sks dog", 8, 16, 10, 0);
    check_item(ds, "10_sks dog/nested/n.jpg", "sks dog", 16, 8, 10, 0);
    check_item(ds, "3_cat/c.png", "c caption", 8, 8, 3, 0);
    lsd_dataset_folder f = {.struct_size = sizeof f};
    CHECK_OK(lsd_dataset_folder_info(ds, 0, &f));
    CHECK(f.images == 3 && f.repeats == 10 && !f.is_class && !strcmp(f.caption, "sks dog"));
    CHECK_OK(lsd_dataset_folder_info(ds, 1, &f));
    CHECK(f.images == 1 && f.repeats == 3 && !strcmp(f.caption, "cat"));
    CHECK_STATUS(lsd_dataset_folder_info(ds, 2, &f), LSD_ERR_INVALID_ARGUMENT, "index 2");
    lsd_dataset_free(ds);

    /* Regularisation images: 33 training draws (3 x 10 + 1 x 3). kohya registers r1 (1), r2 (1), r3 (1): 3 draws,
     * then adds one repeat an image in turn until 33: 30 more = 10 rounds, so 11 each. */
    const char *reg = put_dir(d, "reg");
    put_image(reg, "1_dog/r1.png", 8, 8, IMG_PNG, 4);
    put_image(reg, "1_dog/r2.png", 8, 8, IMG_PNG, 5);
    put_image(reg, "1_dog/r3.jpg", 8, 8, IMG_JPEG, 6);
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.reg_data_dir = reg;
    ds = open_ok(train, &p);
    if (!ds)
        return;
    CHECK(lsd_dataset_size(ds) == 7 && ds->items[4].is_class && strstr(ds->items[4].path, "r1.png"),
          "reg items last");
    check_item(ds, "r1.png", "dog", 8, 8, 11, 1);
    check_item(ds, "r2.png", "dog", 8, 8, 11, 1);
    check_item(ds, "r3.jpg", "dog", 8, 8, 11, 1);
    lsd_dataset_info info = {.struct_size = sizeof info};
    CHECK_OK(lsd_dataset_get_info(ds, &info));
    CHECK(info.images == 4 && info.class_images == 3 && info.draws == 33 && info.class_draws == 33 &&
          info.folders == 3, "%zu %zu %zu %zu", info.images, info.class_images, info.draws, info.class_draws);
    lsd_dataset_free(ds);
    /* More regularisation draws than training draws: kohya stops registering once they reach them: r1 20
     * (20 < 33), r2 20 (40 >= 33), stop; r3 is never drawn. */
    const char *reg2 = put_dir(d, "reg2");
    put_image(reg2, "20_dog/r1.png", 8, 8, IMG_PNG, 4);
    put_image(reg2, "20_dog/r2.png", 8, 8, IMG_PNG, 5);
    put_image(reg2, "20_dog/r3.png", 8, 8, IMG_PNG, 6);
    p.reg_data_dir = reg2;
    ds = open_ok(train, &p);
    check_item(ds, "reg2/20_dog/r1.png", "dog", 8, 8, 20, 1);
    check_item(ds, "reg2/20_dog/r2.png", "dog", 8, 8, 20, 1);
    check_item(ds, "reg2/20_dog/r3.png", "dog", 8, 8, 0, 1);
    CHECK_OK(lsd_dataset_get_info(ds, &info));
    CHECK(info.class_draws == 40);
    lsd_dataset_free(ds);
}

TEST(data_layout_dreambooth)
{
    const char *d = temp_dir();
    const char *inst = put_dir(d, "instance"), *cls = put_dir(d, "class");
    put_image(inst, "x.png", 8, 8, IMG_PNG, 0);
    put_image(inst, "y.webp", 12, 8, IMG_WEBP, 1);
    put_text(inst, "y.txt", "caption files are not read in this layout", -1);
    put_image(cls, "0-aa.png", 8, 8, IMG_PNG, 2);
    put_image(cls, "sub/1-bb.jpg", 8, 12, IMG_JPEG, 3);
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.instance_prompt = "a photo of sks dog";
    lsd_dataset *ds = open_ok(inst, &p);
    if (ds) {
        CHECK(ds->layout == LSD_LAYOUT_DREAMBOOTH && lsd_dataset_size(ds) == 2);
        check_item(ds, "y.webp", "a photo of sks dog", 12, 8, 1, 0);
        lsd_dataset_free(ds);
    }
    p.class_data_dir = cls;
    CHECK_STATUS(lsd_dataset_open(inst, &p, &ds), LSD_ERR_INVALID_ARGUMENT, "needs class_prompt");
    p.class_prompt = "a photo of a dog";
    ds = open_ok(inst, &p);
    if (ds) {
        CHECK(lsd_dataset_size(ds) == 4 && !ds->items[1].is_class && ds->items[2].is_class);
        check_item(ds, "x.png", "a photo of sks dog", 8, 8, 1, 0);
        check_item(ds, "0-aa.png", "a photo of a dog", 8, 8, 1, 1);
        check_item(ds, "sub/1-bb.jpg", "a photo of a dog", 8, 12, 1, 1);
        lsd_dataset_info info = {.struct_size = sizeof info};
        CHECK_OK(lsd_dataset_get_info(ds, &info));
        CHECK(info.images == 2 && info.class_images == 2 && info.folders == 2);
        lsd_dataset_folder f = {.struct_size = sizeof f};
        CHECK_OK(lsd_dataset_folder_info(ds, 1, &f));
        CHECK(f.is_class && !strcmp(f.caption, "a photo of a dog") && f.images == 2);
        lsd_dataset_free(ds);
    }
    lsd_dataset_params_init(&p);
    p.layout = LSD_LAYOUT_DREAMBOOTH;
    CHECK_STATUS(lsd_dataset_open(inst, &p, &ds), LSD_ERR_INVALID_ARGUMENT, "needs instance_prompt");

    /* Class images go with any layout: here captions beside the training images. */
    lsd_dataset_params_init(&p);
    p.class_data_dir = cls;
    p.class_prompt = "a photo of a dog";
    put_text(inst, "x.txt", "x's own caption", -1);
    ds = open_ok(inst, &p);
    if (ds) {
        CHECK(ds->layout == LSD_LAYOUT_FOLDER && lsd_dataset_size(ds) == 4);
        check_item(ds, "y.webp", "caption files are not read in this layout", 12, 8, 1, 0);
        check_item(ds, "x.png", "x's own caption", 8, 8, 1, 0);
        check_item(ds, "sub/1-bb.jpg", "a photo of a dog", 8, 12, 1, 1);
        lsd_dataset_free(ds);
    }
}

TEST(data_layout_detection_and_options)
{
    const char *d = temp_dir();
    put_image(d, "a.png", 8, 8, IMG_PNG, 0);
    put_text(d, "a.txt", "a", -1);
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    lsd_dataset *ds = NULL;
    p.reg_data_dir = d;
    p.layout = LSD_LAYOUT_FOLDER;
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_INVALID_ARGUMENT, "reg_data_dir does not apply to the folder");
    lsd_dataset_params_init(&p);
    p.layout = LSD_LAYOUT_KOHYA;
    p.caption_data_dir = d;
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_INVALID_ARGUMENT, "caption_data_dir does not apply");
    lsd_dataset_params_init(&p);
    p.layout = (lsd_dataset_layout)9;
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_INVALID_ARGUMENT, "layout");
    /* Forced kohya on a folder without N_name folders finds no images. */
    p.layout = LSD_LAYOUT_KOHYA;
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_NOT_FOUND, "no images");
    CHECK_STATUS(lsd_dataset_open(put_text(d, "file", "x", -1), NULL, &ds), LSD_ERR_INVALID_ARGUMENT,
                 "not a directory");
    for (int l = 0; l <= LSD_LAYOUT_DREAMBOOTH; l++) {
        lsd_dataset_layout back;
        CHECK_OK(lsd_dataset_layout_from_name(lsd_dataset_layout_name((lsd_dataset_layout)l), &back));
        CHECK(back == (lsd_dataset_layout)l);
    }
    lsd_dataset_layout x;
    CHECK_STATUS(lsd_dataset_layout_from_name("imagefolder", &x), LSD_ERR_INVALID_ARGUMENT, "imagefolder");
}
