"""Published shape of the real BankSim files (``../shared/reference/banksim-stats.json``).

The generator reproduces these proportions; nothing else in the producer depends on them.
Merchant -> category is the real mapping (read off the first 10,000 real rows, the last five
merchants solved from the category totals, which they match exactly).
"""

from __future__ import annotations

FULL_ROWS = 594_643
CUSTOMERS = 4_112
STEPS = 180
ZIP_CODE = "28007"

TRANSACTION_HEADER = (
    "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud"
)
IMPORTANCE_HEADER = "Source,Target,Weight,typeTrans,fraud"

# merchant -> (transactions in the full file, category)
MERCHANTS: dict[str, tuple[int, str]] = {
    "M1823072687": (299_693, "es_transportation"),
    "M348934600": (205_426, "es_transportation"),
    "M85975013": (26_254, "es_food"),
    "M1053599405": (6_821, "es_health"),
    "M151143676": (6_373, "es_barsandrestaurants"),
    "M855959430": (6_098, "es_hyper"),
    "M1946091778": (5_343, "es_wellnessandbeauty"),
    "M1913465890": (3_988, "es_health"),
    "M209847108": (3_814, "es_wellnessandbeauty"),
    "M480139044": (3_508, "es_health"),
    "M349281107": (2_881, "es_fashion"),
    "M1600850729": (2_624, "es_fashion"),
    "M1535107174": (1_868, "es_wellnessandbeauty"),
    "M980657600": (1_769, "es_sportsandtoys"),
    "M78078399": (1_608, "es_wellnessandbeauty"),
    "M1198415165": (1_580, "es_wellnessandbeauty"),
    "M840466850": (1_399, "es_tech"),
    "M1649169323": (1_173, "es_sportsandtoys"),
    "M547558035": (949, "es_fashion"),
    "M50039827": (916, "es_health"),
    "M1888755466": (912, "es_otherservices"),
    "M692898500": (900, "es_health"),
    "M1400236507": (776, "es_home"),
    "M1842530320": (751, "es_tech"),
    "M732195782": (608, "es_travel"),
    "M97925176": (599, "es_wellnessandbeauty"),
    "M45060432": (573, "es_hotelservices"),
    "M1741626453": (528, "es_sportsandtoys"),
    "M1313686961": (527, "es_contents"),
    "M1872033263": (525, "es_home"),
    "M1352454843": (370, "es_hotelservices"),
    "M677738360": (358, "es_contents"),
    "M2122776122": (341, "es_home"),
    "M923029380": (323, "es_home"),
    "M3697346": (308, "es_leisure"),
    "M17379832": (282, "es_sportsandtoys"),
    "M1748431652": (274, "es_wellnessandbeauty"),
    "M1873032707": (250, "es_hotelservices"),
    "M2011752106": (244, "es_hotelservices"),
    "M1416436880": (220, "es_tech"),
    "M1294758098": (191, "es_leisure"),
    "M1788569036": (181, "es_sportsandtoys"),
    "M857378720": (122, "es_hotelservices"),
    "M348875670": (107, "es_hotelservices"),
    "M1353266412": (78, "es_hotelservices"),
    "M495352832": (69, "es_travel"),
    "M933210764": (69, "es_sportsandtoys"),
    "M2080407379": (48, "es_travel"),
    "M117188757": (21, "es_home"),
    "M1726401631": (3, "es_travel"),
}

# category -> (mean amount, fraud rate)
CATEGORIES: dict[str, tuple[float, float]] = {
    "es_transportation": (26.958187, 0.0),
    "es_food": (37.070405, 0.0),
    "es_health": (135.621367, 0.105126),
    "es_wellnessandbeauty": (65.511221, 0.047594),
    "es_fashion": (65.666642, 0.017973),
    "es_barsandrestaurants": (43.461014, 0.018829),
    "es_hyper": (45.970421, 0.045917),
    "es_sportsandtoys": (215.715280, 0.495252),
    "es_tech": (120.947937, 0.066667),
    "es_home": (165.670846, 0.152064),
    "es_hotelservices": (205.614249, 0.314220),
    "es_otherservices": (135.881524, 0.25),
    "es_contents": (44.547571, 0.0),
    "es_travel": (2250.409190, 0.793956),
    "es_leisure": (288.911303, 0.949900),
}

# Transaction shares of each gender; enterprises ('E') always have age 'U'.
GENDER_SHARES = {"F": 324_565, "M": 268_385, "E": 1_178, "U": 515}
AGE_SHARES = {"0": 2_452, "1": 58_131, "2": 187_310, "3": 147_131, "4": 109_025, "5": 62_642,
              "6": 26_774}

# Rows per step grow roughly linearly over the 180 days (2,430 on day 0, ~3,740 on day 179).
FIRST_STEP_ROWS = 2_430
LAST_STEP_ROWS = 3_740
