"""The dataset catalog: one `DatasetSpec` per key of docs/PROTOCOL.md, more public scene datasets
(WHU-RS19, RSSCN7, EuroSAT), and the lookup that also finds a user's own datasets.

Class names are in a fixed order (the order of the label indices). Layouts describe the folder
tree that unpacking the official download gives; `prepare` checks a manual dir against them.
`get_spec` is the one lookup: a catalog key, else a dataset registered with `rssc datasets add`
(`rssc_mlflow.data.user_datasets`, specs stored under $RSSC_DATA_DIR).
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Literal

from rssc_mlflow.errors import DatasetError

Task = Literal["single", "multi"]
Layout = Literal["folder_per_class", "two_level", "mlrsnet", "imagenet", "user_folders",
                 "user_csv"]
Origin = Literal["catalog", "user"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    key: str
    title: str
    classes: tuple[str, ...]
    task: Task
    expected_images: int
    layout: Layout
    # Folder names from the archive's top folder down to the class folders ("" = none).
    archive_root: str
    images_dir: str
    # How the files inside a class folder are named, e.g. "<class>_NNN.jpg".
    file_pattern: str
    download_page: str
    expected_per_class: dict[str, int] | None = None
    # MLRSNet subsets: the categories they keep, and the fraction of each category's images.
    parent: str | None = None
    categories: tuple[str, ...] | None = None
    fraction: float = 1.0
    notes: str = ""
    # Ground sampling distance and image size as published; `hrrs` is False for medium
    # resolution (EuroSAT: 10 m), which the paper's question (HRRS pre-training) does not cover.
    resolution: str = ""
    hrrs: bool = True
    # "user": registered with `rssc datasets add`; its spec file's digest is recorded on runs.
    origin: Origin = "catalog"
    spec_digest: str = ""
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.task == "multi"

    @property
    def is_mlrsnet(self) -> bool:
        return self.layout == "mlrsnet"

    @property
    def family(self) -> str:
        """The images a key reads: "mlrsnet" for all MLRSNet keys (its single- and multi-label
        views and subsets are the same images), else the key itself. Keys of one family share
        one split and are never paired as source and target."""
        return "mlrsnet" if self.is_mlrsnet else self.key

    def expected_layout(self) -> str:
        """A human description of the tree `prepare` expects, for error messages."""
        top = "/".join(p for p in (self.archive_root, self.images_dir) if p)
        if self.layout == "two_level":
            return (
                f"{self.title}: <top category>/<class>/{self.file_pattern} (two levels; the top "
                f"folder names may be anything), e.g. 'construction land/{self.classes[0]}/"
                f"{self.file_pattern.replace('<class>', self.classes[0])}'"
            )
        if self.layout == "mlrsnet":
            return (
                f"{self.title}: Images/<category>/{self.file_pattern} and labels/<category>.csv "
                "(the labels folder may be named 'Labels'), one CSV per category folder"
            )
        if self.layout == "imagenet":
            return (
                f"{self.title}: an ImageNet-1k train folder, <wnid>/<wnid>_N.JPEG, holding (at "
                "least) the 100 wnids of the ImageNet-100 list; with --with-val also val/<wnid>/"
                "ILSVRC2012_val_NNNNNNNN.JPEG next to it"
            )
        if self.layout in ("user_folders", "user_csv"):
            return f"{self.title}: {self.file_pattern}"
        return f"{self.title}: {top}/<class>/{self.file_pattern}"


# --- MLRSNet ------------------------------------------------------------------------------
# The 46 category folders (single-label classes), alphabetical as in the download.
MLRSNET_CATEGORIES: tuple[str, ...] = (
    "airplane", "airport", "bareland", "baseball_diamond", "basketball_court", "beach",
    "bridge", "chaparral", "cloud", "commercial_area", "dense_residential_area", "desert",
    "eroded_farmland", "farmland", "forest", "freeway", "golf_course", "ground_track_field",
    "harbor&port", "industrial_area", "intersection", "island", "lake", "meadow",
    "mobile_home_park", "mountain", "overpass", "park", "parking_lot", "parkway", "railway",
    "railway_station", "river", "roundabout", "shipping_yard", "snowberg",
    "sparse_residential_area", "stadium", "storage_tank", "swimmimg_pool", "tennis_court",
    "terrace", "transmission_tower", "vegetable_greenhouse", "wetland", "wind_turbine",
)  # fmt: skip
MLRSNET_CATEGORY_COUNTS: dict[str, int] = dict(zip(MLRSNET_CATEGORIES, (
    1762, 2189, 1500, 2002, 2895, 2500, 2500, 2500, 1798, 2500, 2783, 2539, 2500, 2501, 2501,
    2500, 2515, 2500, 2505, 2110, 2498, 2499, 2500, 2502, 2500, 2500, 2500, 1682, 2502, 2537,
    2500, 2187, 2500, 2040, 2500, 2555, 1829, 2462, 2500, 2005, 2500, 2500, 2500, 2601, 2612,
    2050,
)))  # fmt: skip
# The 60 labels of the CSV header, in column order, typos kept ("habor").
MLRSNET_LABELS: tuple[str, ...] = (
    "airplane", "airport", "bare soil", "baseball diamond", "basketball court", "beach",
    "bridge", "buildings", "cars", "chaparral", "cloud", "containers", "crosswalk",
    "dense residential area", "desert", "dock", "factory", "field", "football field", "forest",
    "freeway", "golf course", "grass", "greenhouse", "gully", "habor", "intersection", "island",
    "lake", "mobile home", "mountain", "overpass", "park", "parking lot", "parkway", "pavement",
    "railway", "railway station", "river", "road", "roundabout", "runway", "sand", "sea",
    "ships", "snow", "snowberg", "sparse residential area", "stadium", "swimming pool", "tanks",
    "tennis court", "terrace", "track", "trail", "transmission tower", "trees", "water",
    "wetland", "wind turbine",
)  # fmt: skip
MLRSNET_MAX_LABELS = 13  # rows with more positives than this are reported as anomalies

# Each UCM class and the MLRSNet categories that show it (Table III/IV "same classes").
# UCM's `mediumresidential` has no category of its own: MLRSNet only has dense and sparse
# residential, both already mapped. `buildings` is MLRSNet's commercial and industrial areas and
# `runway` its airports. These 21 categories hold exactly the paper's 50,197 images.
UCM_TO_MLRSNET: dict[str, tuple[str, ...]] = {
    "agricultural": ("farmland",),
    "airplane": ("airplane",),
    "baseballdiamond": ("baseball_diamond",),
    "beach": ("beach",),
    "buildings": ("commercial_area", "industrial_area"),
    "chaparral": ("chaparral",),
    "denseresidential": ("dense_residential_area",),
    "forest": ("forest",),
    "freeway": ("freeway",),
    "golfcourse": ("golf_course",),
    "harbor": ("harbor&port",),
    "intersection": ("intersection",),
    "mediumresidential": (),
    "mobilehomepark": ("mobile_home_park",),
    "overpass": ("overpass",),
    "parkinglot": ("parking_lot",),
    "river": ("river",),
    "runway": ("airport",),
    "sparseresidential": ("sparse_residential_area",),
    "storagetanks": ("storage_tank",),
    "tenniscourt": ("tennis_court",),
}
_UCM_SAME = {c for cats in UCM_TO_MLRSNET.values() for c in cats}
MLRSNET_UCM_SAME = tuple(c for c in MLRSNET_CATEGORIES if c in _UCM_SAME)
MLRSNET_UCM_OTHER = tuple(c for c in MLRSNET_CATEGORIES if c not in _UCM_SAME)
# mlrsnet_half keeps floor(n/2) images of every category, chosen by a seeded hash of the file
# name (see builders.mlrsnet.half_selection), so the choice is the same on every machine.
MLRSNET_HALF_SEED = 42

MLRSNET_PAGE = "https://github.com/cugbrs/MLRSNet (data: https://data.mendeley.com/datasets/7j9bv9vwsx/3)"


def _mlrsnet_subset(key: str, title: str, categories: tuple[str, ...], fraction: float,
                    expected: int, notes: str) -> DatasetSpec:
    return DatasetSpec(
        key=key, title=title, classes=categories, task="single", expected_images=expected,
        layout="mlrsnet", archive_root="MLRSNet", images_dir="Images",
        file_pattern="<category>_NNNNN.jpg", download_page=MLRSNET_PAGE, parent="mlrsnet_sl",
        categories=categories, fraction=fraction, notes=notes,
    )


# --- The other datasets ---------------------------------------------------------------------
RESISC45_CLASSES: tuple[str, ...] = (
    "airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge",
    "chaparral", "church", "circular_farmland", "cloud", "commercial_area", "dense_residential",
    "desert", "forest", "freeway", "golf_course", "ground_track_field", "harbor",
    "industrial_area", "intersection", "island", "lake", "meadow", "medium_residential",
    "mobile_home_park", "mountain", "overpass", "palace", "parking_lot", "railway",
    "railway_station", "rectangular_farmland", "river", "roundabout", "runway", "sea_ice", "ship",
    "snowberg", "sparse_residential", "stadium", "storage_tank", "tennis_court", "terrace",
    "thermal_power_station", "wetland",
)  # fmt: skip
PATTERNNET_CLASSES: tuple[str, ...] = (
    "airplane", "baseball_field", "basketball_court", "beach", "bridge", "cemetery", "chaparral",
    "christmas_tree_farm", "closed_road", "coastal_mansion", "crosswalk", "dense_residential",
    "ferry_terminal", "football_field", "forest", "freeway", "golf_course", "harbor",
    "intersection", "mobile_home_park", "nursing_home", "oil_gas_field", "oil_well", "overpass",
    "parking_lot", "parking_space", "railway", "river", "runway", "runway_marking",
    "shipping_yard", "solar_panel", "sparse_residential", "storage_tank", "swimming_pool",
    "tennis_court", "transformer_station", "wastewater_treatment_plant",
)  # fmt: skip
RSICB256_CLASSES: tuple[str, ...] = (
    "airplane", "airport_runway", "artificial_grassland", "avenue", "bare_land", "bridge",
    "city_building", "coastline", "container", "crossroads", "dam", "desert", "dry_farm",
    "forest", "green_farmland", "highway", "hirst", "lakeshore", "mangrove", "marina",
    "mountain", "parkinglot", "pipeline", "residents", "river", "river_protection_forest",
    "sandbeach", "sapling", "sea", "shrubwood", "snow_mountain", "sparse_forest", "storage_room",
    "stream", "town",
)  # fmt: skip
# RSI-CB's top-level folders as one copy names them; other copies differ, and `prepare` ignores
# them. Used by `synth` to write a realistic tree.
RSICB256_TOP_FOLDERS: dict[str, tuple[str, ...]] = {
    "agricultural land": ("dry_farm", "green_farmland"),
    "construction land": ("city_building", "container", "residents", "storage_room", "town",
                          "pipeline"),
    "transportation & facilities": ("airplane", "airport_runway", "avenue", "bridge",
                                    "crossroads", "highway", "marina", "parkinglot"),
    "water area": ("coastline", "dam", "hirst", "lakeshore", "river", "sea", "stream"),
    "woodland": ("artificial_grassland", "forest", "mangrove", "river_protection_forest",
                 "sapling", "shrubwood", "sparse_forest"),
    "other land": ("bare_land", "desert", "mountain", "sandbeach", "snow_mountain"),
}
AID_CLASS_COUNTS: dict[str, int] = {
    "Airport": 360, "BareLand": 310, "BaseballField": 220, "Beach": 400, "Bridge": 360,
    "Center": 260, "Church": 240, "Commercial": 350, "DenseResidential": 410, "Desert": 300,
    "Farmland": 370, "Forest": 250, "Industrial": 390, "Meadow": 280, "MediumResidential": 290,
    "Mountain": 340, "Park": 350, "Parking": 390, "Playground": 370, "Pond": 420, "Port": 380,
    "RailwayStation": 260, "Resort": 290, "River": 410, "School": 300, "SparseResidential": 300,
    "Square": 330, "Stadium": 290, "StorageTanks": 360, "Viaduct": 420,
}  # fmt: skip
UCM_CLASSES: tuple[str, ...] = tuple(UCM_TO_MLRSNET)
# WHU-RS19 (Xia et al. 2010; 600x600 px, up to 0.5 m): the class folders of WHU-RS19.zip, as
# AiTLAS lists them (two are camelCase). 1,005 images, about 50 per class; the download page
# gives no per-class counts, so none are checked.
WHU_RS19_CLASSES: tuple[str, ...] = (
    "Airport", "Beach", "Bridge", "Commercial", "Desert", "Farmland", "footballField", "Forest",
    "Industrial", "Meadow", "Mountain", "Park", "Parking", "Pond", "Port", "railwayStation",
    "Residential", "River", "Viaduct",
)  # fmt: skip
# RSSCN7 (Zou et al. 2015; 400x400 px): 7 folders of 400 images, each name prefixed by a letter
# that is also the prefix of its files (aGrass/a001.jpg), as in the GitHub release.
RSSCN7_CLASSES: tuple[str, ...] = ("aGrass", "bField", "cIndustry", "dRiverLake", "eForest",
                                   "fResident", "gParking")
# EuroSAT RGB (Helber et al. 2019; Sentinel-2, 10 m, 64x64 px): TFDS's `eurosat/rgb` builder and
# TorchGeo's class order and counts; EuroSAT.zip unpacks to 2750/<Class>/<Class>_N.jpg.
EUROSAT_CLASS_COUNTS: dict[str, int] = {
    "AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500,
    "Industrial": 2500, "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000,
    "River": 2500, "SeaLake": 3000,
}  # fmt: skip


# The paper's 131,689 ImageNet-100 images: the 126,689 train images of the 100 wnids plus their
# ILSVRC2012 validation images, 50 per wnid (`rssc prepare imagenet100 --with-val`).
IMAGENET100_TRAIN_IMAGES = 126_689
IMAGENET_VAL_PER_CLASS = 50


def imagenet100_wnids() -> tuple[str, ...]:
    """The 100 ImageNet-1k wnids of ImageNet-100 (the CMC list), shipped with the package."""
    text = resources.files("rssc_mlflow.resources").joinpath("imagenet100.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _build_catalog() -> dict[str, DatasetSpec]:
    specs = [
        DatasetSpec(
            key="mlrsnet_sl", title="MLRSNet (single-label)", classes=MLRSNET_CATEGORIES,
            task="single", expected_images=109_161, layout="mlrsnet", archive_root="MLRSNet",
            images_dir="Images", file_pattern="<category>_NNNNN.jpg",
            download_page=MLRSNET_PAGE, expected_per_class=MLRSNET_CATEGORY_COUNTS,
            notes="category folder = class",
        ),
        DatasetSpec(
            key="mlrsnet_ml", title="MLRSNet (multi-label)", classes=MLRSNET_LABELS,
            task="multi", expected_images=109_161, layout="mlrsnet", archive_root="MLRSNet",
            images_dir="Images", file_pattern="<category>_NNNNN.jpg",
            download_page=MLRSNET_PAGE, notes="60 labels from the CSV header, typos kept",
        ),
        _mlrsnet_subset("mlrsnet_ucm_same", "MLRSNet, classes shared with UCM",
                        MLRSNET_UCM_SAME, 1.0, 50_197,
                        "the 21 categories of UCM_TO_MLRSNET (Tables III/IV, 'same classes')"),
        _mlrsnet_subset("mlrsnet_ucm_other", "MLRSNet, classes not in UCM",
                        MLRSNET_UCM_OTHER, 1.0, 58_964,
                        "the other 25 categories (Tables III/IV, 'different classes')"),
        _mlrsnet_subset("mlrsnet_half", "MLRSNet, all classes, half the images",
                        MLRSNET_CATEGORIES, 0.5, 54_573,
                        "floor(n/2) images of each of the 46 categories ('all classes')"),
        DatasetSpec(
            key="resisc45", title="NWPU-RESISC45", classes=RESISC45_CLASSES, task="single",
            expected_images=31_500, layout="folder_per_class", archive_root="NWPU-RESISC45",
            images_dir="", file_pattern="<class>_NNN.jpg",
            download_page="https://gcheng-nwpu.github.io/#Datasets",
            expected_per_class={c: 700 for c in RESISC45_CLASSES},
        ),
        DatasetSpec(
            key="patternnet", title="PatternNet", classes=PATTERNNET_CLASSES, task="single",
            expected_images=30_400, layout="folder_per_class", archive_root="PatternNet",
            images_dir="images", file_pattern="<class>NNN.jpg",
            download_page="https://sites.google.com/view/zhouwx/dataset",
            expected_per_class={c: 800 for c in PATTERNNET_CLASSES},
        ),
        DatasetSpec(
            key="rsicb256", title="RSI-CB256", classes=RSICB256_CLASSES, task="single",
            expected_images=24_747, layout="two_level", archive_root="", images_dir="",
            file_pattern="<class>(N).tif", download_page="https://github.com/lehaifeng/RSI-CB",
            notes="the paper says ~24,000; copies differ, a different count is only reported",
        ),
        DatasetSpec(
            key="aid", title="AID", classes=tuple(AID_CLASS_COUNTS), task="single",
            expected_images=10_000, layout="folder_per_class", archive_root="AID",
            images_dir="", file_pattern="<lowercase class>_N.jpg",
            download_page="https://captain-whu.github.io/AID/",
            expected_per_class=AID_CLASS_COUNTS, notes="600x600 images; no official split",
        ),
        DatasetSpec(
            key="ucm", title="UC Merced Land Use", classes=UCM_CLASSES, task="single",
            expected_images=2_100, layout="folder_per_class", archive_root="UCMerced_LandUse",
            images_dir="Images", file_pattern="<class>NN.tif",
            download_page="http://weegee.vision.ucmerced.edu/datasets/landuse.html",
            expected_per_class={c: 100 for c in UCM_CLASSES},
            notes="44 images are not 256x256; they are kept as they are",
        ),
        DatasetSpec(
            key="imagenet100", title="ImageNet-100", classes=imagenet100_wnids(), task="single",
            expected_images=131_689, layout="imagenet", archive_root="train", images_dir="",
            file_pattern="<wnid>_N.JPEG",
            download_page="https://image-net.org/download-images.php (ILSVRC2012 train)",
            notes="100 classes of ImageNet-1k (CMC list); the paper's 131,689 are 126,689 "
                  "train + 5,000 val images: `rssc prepare imagenet100 --with-val` adds the val",
        ),
        # --- Not in the paper: more public scene datasets, as targets of `rssc transfer`. ---
        DatasetSpec(
            key="whu_rs19", title="WHU-RS19", classes=WHU_RS19_CLASSES, task="single",
            expected_images=1_005, layout="folder_per_class", archive_root="WHU-RS19",
            images_dir="", file_pattern="<class>_NN.jpg",
            download_page="https://captain-whu.github.io/BED4RS/ (WHU-RS19.zip)",
            notes="about 50 images per class (no per-class counts published); copies spell the "
                  "file names differently (airport_01.jpg, beach-01.jpg), which prepare ignores",
            resolution="up to 0.5 m, 600x600 px (Google Earth)",
        ),
        DatasetSpec(
            key="rsscn7", title="RSSCN7", classes=RSSCN7_CLASSES, task="single",
            expected_images=2_800, layout="folder_per_class", archive_root="RSSCN7-master",
            images_dir="", file_pattern="<letter>NNN.jpg",
            download_page="https://github.com/palewithout/RSSCN7 (Code > Download ZIP)",
            expected_per_class={c: 400 for c in RSSCN7_CLASSES},
            notes="class folders carry a letter prefix (aGrass ... gParking), kept as the names",
            resolution="400x400 px (Google Earth), four scales",
        ),
        DatasetSpec(
            key="eurosat", title="EuroSAT (RGB)", classes=tuple(EUROSAT_CLASS_COUNTS),
            task="single", expected_images=27_000, layout="folder_per_class",
            archive_root="2750", images_dir="", file_pattern="<class>_N.jpg",
            download_page="https://github.com/phelber/EuroSAT (EuroSAT.zip, RGB)",
            expected_per_class=EUROSAT_CLASS_COUNTS,
            notes="MEDIUM resolution (Sentinel-2, 10 m), not HRRS; newer copies unpack to "
                  "EuroSAT_RGB/ instead of 2750/, both are found",
            resolution="10 m (Sentinel-2), 64x64 px", hrrs=False,
        ),
    ]
    return {s.key: s for s in specs}


CATALOG: dict[str, DatasetSpec] = _build_catalog()
# Catalog keys outside the paper: never in its tables or in `reproduce`'s grid.
EXTRA_KEYS = ("whu_rs19", "rsscn7", "eurosat")


def get_spec(key: str) -> DatasetSpec:
    """The spec for `key`: a catalog key, else a user dataset, else a DatasetError that lists
    the keys there are."""
    spec = CATALOG.get(key)
    if spec is not None:
        return spec
    from rssc_mlflow.data import user_datasets  # it imports this module

    spec = user_datasets.find_spec(key)
    if spec is not None:
        return spec
    users = user_datasets.names()
    mine = f" Your datasets: {', '.join(users)}." if users else ""
    raise DatasetError(
        f"Unknown dataset {key!r}. Known datasets: {', '.join(CATALOG)}.{mine} Run `rssc "
        "datasets` to list them, or `rssc datasets add NAME --manual-dir DIR` to register your "
        "own."
    )


def all_specs() -> dict[str, DatasetSpec]:
    """Every dataset there is: the catalog's, then the user's (`rssc datasets add`)."""
    from rssc_mlflow.data import user_datasets

    return {**CATALOG, **{s.key: s for s in user_datasets.specs() if s.key not in CATALOG}}
